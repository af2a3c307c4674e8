"""Built-in `data.kind: digits` (scikit-learn's bundled digits) and `model.kind: mlp`, end to end with an lds."""

from __future__ import annotations

import sys

import pytest
import torch

import sbif_dsl as sb
from sbif_dsl.data.digits import digits_dataset
from sbif_dsl.errors import UsageError
from sbif_dsl.runtime import cpu_threads_for

from .conftest import REPO, sbif, write_spec

SMALL = """\
name: digits_small
seed: 0
device: cpu
data: {kind: digits, n_train: 60, n_test: 10}
model: {kind: mlp, hidden: [8]}
training: {lr: 0.1, momentum: 0.9, batch_size: 16, steps: 30, checkpoints: {log_spaced: 3, include_zero: false}}
observables:
  - {name: train, data: train}
  - {name: test, data: test}
sampler: {eps: 1.0e-4, gamma: 1000, nbeta: 30, batch_size: 16, chains: 2, draws: 20, burn_in: 5}
analyses:
  - {kind: bif, source: train, target: test}
  - {kind: lds, subsets: 4, bootstrap: 50}
"""


def test_digits_split_is_seeded_disjoint_and_scaled():
    ds = digits_dataset(1000, 100, 0)
    tr, te = ds.train, ds.queries["test"]
    assert tr.inputs.shape == (1000, 64) and te.inputs.shape == (100, 64) and tr.targets.dtype == torch.long
    assert not set(tr.names) & set(te.names) and set(tr.targets.tolist()) == set(range(10))
    assert 0 <= float(tr.inputs.min()) and float(tr.inputs.max()) == 1.0 and ds.meta["classes"] == 10
    assert digits_dataset(1000, 100, 0).train.names == tr.names != digits_dataset(1000, 100, 1).train.names
    losses = ds.loss(torch.zeros(5, 10), tr.targets[:5])
    assert losses.shape == (5,) and torch.allclose(losses, torch.full((5,), float(torch.log(torch.tensor(10.0)))))


def test_without_scikit_learn_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if it were not installed
    with pytest.raises(UsageError, match=r"pip install 'sbif_dsl\[digits\]'"):
        digits_dataset(10, 5, 0)


def test_a_feature_vector_is_one_position_in_the_thread_policy():
    """The digits MLP is overhead-bound: it runs on one intra-op thread (two contended threads: 40x slower)."""
    from sbif_dsl.models.mlp import MLP

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_threads_for(MLP([64, 32, 10]), chains=4, batch=64, sample=torch.zeros(64)):
            assert torch.get_num_threads() == 1
        with cpu_threads_for(MLP([64, 32, 10]), chains=4, batch=64, sample=torch.zeros(64, dtype=torch.long)):
            assert torch.get_num_threads() == 2  # 64 token positions: 40M multiply-adds per step
    finally:
        torch.set_num_threads(before)


def test_small_digits_study_end_to_end(tmp_path, cache_path):
    spec = write_spec(tmp_path, SMALL)
    out = sbif("run", str(spec), cache=cache_path).stdout
    assert "ran 15 stages" in out  # dataset, 3 × (checkpoint, sample, bif), 4 subsets, lds
    lds = sb.connect(cache_path).sql("SELECT * FROM lds ORDER BY step NULLS LAST")
    assert lds["scope"].to_list() == ["checkpoint"] * 3 + ["overall"] and set(lds["n_subsets"]) == {4}
    assert all(-1 <= v <= 1 for v in lds["spearman"].drop_nulls())
    assert sb.connect(cache_path).sql("SELECT count(*) AS n FROM lds_subsets")["n"][0] == 3 * 4 * 10
    with pytest.raises(sb.SpecError) as e:
        sb.load(spec, overrides={"data.n_train": 1700, "data.n_test": 200})
    assert any("data: n_train + n_test = 1900; there are 1797 images" in p for p in e.value.problems), e.value.problems


def test_the_shipped_digits_spec_validates_and_plans_100_subsets(tmp_path):
    spec = REPO / "specs" / "digits_lds.yaml"
    assert sbif("validate", str(spec)).returncode == 0
    kinds = [s.kind for s in sb.load(spec, cache=tmp_path / "c.duckdb").build_plan().stages]
    assert kinds.count("lds_subset") == 100 and kinds.count("checkpoint") == 8 and kinds[-1] == "lds"

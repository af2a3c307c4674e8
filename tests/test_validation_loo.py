"""Leave-one-out retraining and BIF-vs-LOO agreement on the tiny study: the real CLI, the real DuckDB."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch

from sbif_dsl.hashing import derive_seed
from sbif_dsl.plan import build_plan
from sbif_dsl.runtime import Runtime
from sbif_dsl.spec import load_spec
from sbif_dsl.stages import loo
from sbif_dsl.store import Store, fetch_frame

from .conftest import TINY_SPEC, sbif, write_spec

LOO_SPEC = (
    TINY_SPEC
    + """\
  - kind: loo
  - kind: agreement
  - kind: agreement
    name: agreement_corr_diag
    value: bif_corr
    diagonal: true
"""
)
ITEMS = ["item0", "item1", "item2", "item3"]


def _json(sql: str, cache) -> list[dict]:
    return json.loads(sbif("query", sql, "--format", "json", cache=cache).stdout)


@pytest.fixture(scope="module")
def loo_run(tmp_path_factory):
    """The tiny study with LOO and two agreements, run once through the CLI: (spec path, cache path)."""
    tmp = tmp_path_factory.mktemp("loo")
    spec, cache = write_spec(tmp, LOO_SPEC), tmp / "cache" / "sbif.duckdb"
    out = sbif("run", str(spec), cache=cache).stdout
    assert "ran 25 stages" in out  # the 19 of the tiny study + 4 LOO retrains + 2 agreements
    return spec, cache


def test_loo_rows_and_deltas(loo_run):
    _, cache_path = loo_run
    rows = _json("SELECT * FROM loo ORDER BY left_out_idx, step, target_idx", cache_path)
    assert len(rows) == 4 * 3 * 4 and {r["step"] for r in rows} == {10, 30, 60}
    assert {r["left_out"] for r in rows} == set(ITEMS) and {r["target"] for r in rows} == set(ITEMS)
    assert all(r["delta"] == r["loss_full"] - r["loss_loo"] for r in rows)
    # removing a sample hurts that sample once it is being learned: Δ_ii < 0 at the last checkpoint
    assert all(r["delta"] < 0 for r in rows if r["step"] == 60 and r["left_out"] == r["target"])
    # the full-run losses are the checkpoints' own: their mean is the recorded training loss
    ck = {r["step"]: r["train_loss"] for r in _json("SELECT step, train_loss FROM checkpoints", cache_path)}
    for step in (10, 30, 60):
        full = [r["loss_full"] for r in rows if r["step"] == step and r["left_out"] == "item0"]
        assert np.mean(full) == pytest.approx(ck[step], rel=1e-5)


def test_loo_caching(loo_run, tmp_path):
    spec, cache = loo_run
    cache_path = tmp_path / "copy" / "sbif.duckdb"
    shutil.copytree(cache.parent, cache_path.parent)  # this test changes what the study references
    assert "nothing to compute" in sbif("run", str(spec), cache=cache_path).stdout
    # a changed LOO definition reruns the 4 retrains and the agreements that read them, nothing else
    changed = sbif("run", str(spec), "--set", "analyses.4.normalization=n_minus_1", cache=cache_path).stdout
    assert "ran 6 stages" in changed
    # the checkpoint schedule is in the LOO key: an added checkpoint retrains every left-out run
    added = write_spec(tmp_path, LOO_SPEC.replace("steps: [10, 30, 60]", "steps: [10, 30, 45, 60]"), "a.yaml")
    # checkpoint + sample + 4 analyses + 4 LOO + 2 agreements
    assert "ran 12 stages" in sbif("run", str(added), cache=cache_path).stdout


def test_loo_matches_hand_written_retraining(tmp_path):
    """Δ from the stage equals a plain PyTorch loop on (1/n)·Σ_{k≠i} l_k from the same init (float tolerance:
    the sums run in another order), and keeping every sample reproduces the full run bitwise."""
    spec = load_spec(write_spec(tmp_path, LOO_SPEC))
    rt, store = Runtime(spec), Store(tmp_path / "c.duckdb")
    plan = build_plan(rt, store)
    ckpts = [s for s in plan.stages if s.kind == "checkpoint"]
    steps = [c.step for c in ckpts]
    from sbif_dsl.executor import execute

    with store.writer():
        execute(rt, store, plan)
    n = len(rt.dataset.train)
    states = store.artifact_files([c.key for c in ckpts])
    full = loo.full_run_losses(rt, {c.step: states[c.key]["state.pt"] for c in ckpts}, "train")
    init_seed = derive_seed(rt.study.seed, "init")

    same = loo.retrain_losses(rt, dict(ckpts[0].params), torch.arange(n), steps, "train")
    for s in steps:
        assert torch.equal(same[s], full[s])  # same init, same schedule, same loop

    i = 2
    keep = [k for k in range(n) if k != i]
    module = rt.new_module(init_seed=init_seed)
    opt = torch.optim.SGD(module.parameters(), lr=rt.study.training.lr)
    x, y = rt.dataset.train.inputs, rt.dataset.train.targets
    by_hand = {}
    for t in range(1, steps[-1] + 1):
        opt.zero_grad()
        (rt.dataset.loss(module(x[keep]), y[keep]).sum() / n).backward()
        opt.step()
        if t in steps:
            with torch.no_grad():
                by_hand[t] = rt.dataset.loss(module(x), y).double()
    with store.connect(read_only=True) as con:
        df = con.execute(
            "SELECT step, target_idx, delta FROM loo WHERE left_out_idx = ? ORDER BY step, target_idx", [i]
        ).fetchnumpy()
    delta = df["delta"].reshape(len(steps), n)
    for k, s in enumerate(steps):
        np.testing.assert_allclose(delta[k], (full[s] - by_hand[s]).numpy(), rtol=0, atol=2e-6)


def _avg_ranks(x: np.ndarray) -> np.ndarray:
    return pl.Series(x).rank("average").to_numpy()


def test_agreement_view_statistics(loo_run):
    """The SQL statistics equal numpy's over the pairs the view says it compared."""
    _, cache_path = loo_run
    with Store(cache_path).connect(read_only=True) as con:
        pairs = fetch_frame(con, "SELECT * FROM agreement_pairs")
        agree = fetch_frame(con, "SELECT * FROM agreement")
        bif = fetch_frame(con, "SELECT step, source, target, bif_cov FROM bif WHERE analysis = 'bif'")
    off = pairs.filter(pl.col("analysis") == "agreement")
    assert off.height == 3 * 4 * 3 and (off["source"] != off["target"]).all()  # off-diagonal only
    assert set(off["bif_value"]) == {"bif_cov"}
    diag = pairs.filter(pl.col("analysis") == "agreement_corr_diag")
    assert diag.height == 3 * 4 * 4 and set(diag["bif_value"]) == {"bif_corr"}

    joined = off.join(bif, on=["step", "source", "target"])
    assert (joined["bif"] == joined["bif_cov"]).all()

    for name, df in (("agreement", off), ("agreement_corr_diag", diag)):
        groups = [("overall", None, df)] + [("checkpoint", s, df.filter(pl.col("step") == s)) for s in (10, 30, 60)]
        for scope, step, g in groups:
            row = agree.filter(
                (pl.col("analysis") == name)
                & (pl.col("scope") == scope)
                & (pl.col("step").is_null() if step is None else pl.col("step") == step)
            ).to_dicts()
            assert len(row) == 1, (name, scope, step)
            r = row[0]
            b, d = g["bif"].to_numpy(), g["loo"].to_numpy()
            assert r["n_pairs"] == len(b)
            assert r["pearson"] == pytest.approx(np.corrcoef(b, d)[0, 1], abs=1e-9)
            assert r["spearman"] == pytest.approx(np.corrcoef(_avg_ranks(b), _avg_ranks(d))[0, 1], abs=1e-9)
            nz = d != 0
            assert r["sign_agreement"] == pytest.approx(np.mean(np.sign(b[nz]) == np.sign(d[nz])), abs=1e-12)
            w = np.abs(d)
            assert r["sign_agreement_weighted"] == pytest.approx(np.sum(w * (np.sign(b) == np.sign(d))) / w.sum())


@pytest.mark.parametrize(
    "extra, expect",
    [
        (
            "  - {kind: loo}\n  - {kind: agreement, bif: nope}\n",
            "spec.yaml:41: analyses.5.bif: no bif analysis named 'nope'; bif analyses: bif, train_on_left",
        ),
        (
            "  - {kind: loo, name: l1}\n  - {kind: agreement}\n",
            "spec.yaml:41: analyses.5.loo: no loo analysis named 'loo'; loo analyses: l1",
        ),
        (
            "  - {kind: loo}\n  - {kind: agreement, bif: train_on_left}\n",
            "spec.yaml:41: analyses.5.loo: targets differ: bif 'train_on_left' targets 'left' (data 'left'), "
            "loo 'loo' targets 'train' (data 'train')",
        ),
        (
            "  - {kind: loo, left_out: [item0, dog]}\n",
            "spec.yaml:40: analyses.4.left_out.1: no training sample 'dog'; items: item0, item1, item2, item3",
        ),
        ("  - {kind: loo, target: nowhere}\n", "spec.yaml:40: analyses.4.target: no observable 'nowhere'"),
    ],
)
def test_reference_errors_name_file_and_line(tmp_path, extra, expect):
    spec = write_spec(tmp_path, TINY_SPEC + extra)
    proc = sbif("validate", str(spec), check=False)
    assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr


def test_loo_needs_in_spec_training(tmp_path):
    text = (
        TINY_SPEC.replace(
            "training:\n  lr: 0.2\n  steps: 60\n  checkpoints:\n    steps: [10, 30, 60]\n    include_zero: false\n",
            "checkpoints:\n  glob: 'ckpt/*.pt'\n",
        )
        + "  - kind: loo\n"
    )
    proc = sbif("validate", str(write_spec(tmp_path, text)), check=False)
    assert proc.returncode == 2 and "analyses.4.kind: loo retrains the model: it needs 'training'" in proc.stderr


def test_left_out_subset_and_python_data_names(tmp_path):
    keys = build_plan(
        Runtime(load_spec(write_spec(tmp_path, TINY_SPEC + "  - {kind: loo, left_out: [item1]}\n"))),
        Store(tmp_path / "c.duckdb"),
    )
    assert [s.label for s in keys.stages if s.kind == "loo"] == ["loo: retrain without item1"]
    user = write_spec(
        tmp_path,
        """\
        name: user_code
        device: cpu
        data: {kind: python, factory: tests.factories_for_tests:regression, options: {n: 6, d: 2}}
        model: {kind: python, factory: tests.factories_for_tests:linear}
        training: {lr: 0.1, steps: 5, checkpoints: {steps: [5]}}
        analyses:
          - kind: bif
          - kind: loo
            left_out: [pt01, pt99]
        """,
        "user.yaml",
    )
    proc = sbif("plan", str(user), cache=tmp_path / "u.duckdb", check=False)
    assert proc.returncode == 2 and "user.yaml:9: analyses.1.left_out.1: no training sample 'pt99'" in proc.stderr


def test_cache_from_before_the_loo_tables_stays_queryable(tmp_path):
    """A cache written before r_loo/r_agreement_stats and study_stages.analysis existed: read-only connections still
    get every view (empty)."""
    store = Store(tmp_path / "old.duckdb")
    store.init()
    with store.connect(views=False) as con:
        con.execute("DROP TABLE r_loo; DROP TABLE r_agreement_stats; DROP TABLE study_stages")
        con.execute(
            "CREATE TABLE study_stages (study VARCHAR NOT NULL, key VARCHAR NOT NULL, PRIMARY KEY (study, key))"
        )
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM agreement").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM bif").fetchone() == (0,)

"""Kinds and keys: golden keys of real plans, what a new field, a rename or a logging field re-keys, and the
declarations every kind makes (stages/kinds.py)."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
from pydantic import Field

from sbif_dsl.hashing import canonical_json, sha256_hex
from sbif_dsl.plan import analysis_stage, build_plan
from sbif_dsl.runtime import Runtime
from sbif_dsl.spec import load_spec, models
from sbif_dsl.stages.kinds import ANALYSES, ANALYSIS, KINDS
from sbif_dsl.store import Store

from .conftest import REPO, TINY_SPEC, write_spec
from .test_lm_e2e import LM_SPEC


def _plan(path, overrides=None, cache=None):
    spec = load_spec(path, overrides)
    return build_plan(Runtime(spec), Store(cache or path.parent / "none.duckdb"))


def _digest(plan) -> str:
    return sha256_hex(canonical_json([[s.kind, s.key] for s in plan.stages]))


# If one of these changes, every user's cache of that study recomputes: bump versions on purpose and say so in the
# README (what an old cache does). Last changed on purpose: sample 6 (traces at the study's dtype), bif 4,
# class_bif 5, token_bif 4, loss_kernel 4, cumulative_bif 3 (correlation intervals on Fisher's z); class_bif 6
# (self-pairs left out); the demo spec's sampler now eps: auto, draws: auto (its sample stages re-key).
GOLDEN = {
    "toy_hierarchy": (
        "dataset",
        "af92e068c4b3b44785f1e5d69d5f2fc08e16607c45a4085c41860ca2f2e81d47",
        "6ad40b8cde24285b38161db0bfefea04947092ac0aa93abcc8c83794f2d8d7d5",
    ),
    "lm": (
        "dataset",
        "0af4bc9554ad82fd0389be1c1c007a030ae6b4b87c7c7e45cdcc91d9609305d5",
        "b356686c8ca52ab976fe254eb3df0139ad8677a6b4b98d4fce7333551fb07bd1",
    ),
}


@pytest.mark.parametrize("which", ["toy_hierarchy", "lm"])
def test_golden_keys_of_real_plans(tmp_path, which):
    path = REPO / "specs" / "toy_hierarchy.yaml" if which == "toy_hierarchy" else write_spec(tmp_path, LM_SPEC)
    plan = _plan(path, cache=tmp_path / "c.duckdb")
    kind, key, digest = GOLDEN[which]
    assert (plan.stages[0].kind, plan.stages[0].key, _digest(plan)) == (kind, key, digest)


def test_a_new_defaulted_field_re_keys_nothing(tmp_path):
    """A field added to a kind's spec model stays out of existing keys: unkeyed, or keyed only once it is set."""
    rt = Runtime(load_spec(write_spec(tmp_path)))
    plan = build_plan(rt, Store(tmp_path / "c.duckdb"))
    sample = next(s for s in plan.stages if s.kind == "sample")
    bif = next(s for s in plan.stages if s.kind == "bif" and s.meta.parent == sample.key)
    base = ANALYSIS["bif"].spec

    class WithNewField(base):
        KEYED_IF_SET = ("shrinkage",)
        shrinkage: float = Field(default=0.0, description="a result-affecting field added later")

    old = base(kind="bif")
    assert analysis_stage(rt, WithNewField(kind="bif"), sample, None).key == analysis_stage(rt, old, sample, None).key
    assert analysis_stage(rt, old, sample, None).key == bif.key
    assert analysis_stage(rt, WithNewField(kind="bif", shrinkage=0.1), sample, None).key != bif.key


def test_logging_and_cosmetic_fields_re_key_nothing(tmp_path):
    path = write_spec(tmp_path)
    base = _plan(path).keys()
    assert _plan(path, ["training.log_every=7"]).keys() == base
    assert _plan(path, ["analyses.0.name=renamed", "title=T", "report.title=R"]).keys() == base


def test_renaming_an_analysis_recomputes_nothing_and_renames_it_in_sql(tmp_path, cache_path):
    from .conftest import sbif

    spec = write_spec(tmp_path)
    sbif("run", str(spec), cache=cache_path)
    out = sbif("run", str(spec), "--set", "analyses.0.name=renamed", cache=cache_path).stdout
    assert "nothing to compute" in out
    names = sbif("query", "SELECT DISTINCT analysis FROM bif ORDER BY 1", "--format", "csv", cache=cache_path).stdout
    assert names.split() == ["analysis", "renamed", "train_on_left"]


def test_two_analyses_that_differ_only_in_name_are_refused(tmp_path):
    from sbif_dsl.errors import SpecError

    with pytest.raises(SpecError, match="computes the same as analysis 'bif'"):
        load_spec(write_spec(tmp_path, TINY_SPEC + "  - {kind: bif, name: again}\n"))


def _keyed_models():
    """Every spec model whose fields feed keys (declares KEYED), reached from the Study model."""
    seen, todo = {}, [models.Study]
    while todo:
        m = todo.pop()
        for f in m.model_fields.values():
            for t in _classes(f.annotation):
                if t not in seen:
                    seen[t] = None
                    todo.append(t)
    return [m for m in seen if getattr(m, "KEYED", None) is not None]


def _classes(tp):
    if isinstance(tp, type) and issubclass(tp, models.Base):
        return [tp]
    return [c for a in typing.get_args(tp) for c in _classes(a)]


def test_every_field_of_a_keyed_model_is_classified():
    """A developer adding a field must say whether it changes results (KEYED / KEYED_IF_SET) or not (UNKEYED)."""
    checked = _keyed_models()
    assert {k.spec for k in ANALYSES} <= set(checked) and models.Sampler in checked and models.Training in checked
    for m in checked:
        declared = [*m.KEYED, *m.KEYED_IF_SET, *m.UNKEYED]
        assert sorted(set(declared) & set(m.model_fields)) == sorted(m.model_fields), m.__name__
        assert len(set(m.KEYED) | set(m.KEYED_IF_SET)) == len(m.KEYED) + len(m.KEYED_IF_SET), m.__name__
        assert not (set(m.KEYED) | set(m.KEYED_IF_SET)) & (set(m.UNKEYED) - {"name", "kind"}), m.__name__


def test_every_kind_declares_unique_tables_and_documented_views():
    tables = [t.name for k in KINDS for t in k.tables]
    views = [v.name for k in KINDS for v in k.views]
    assert len(tables) == len(set(tables)) and all(t.startswith("r_") for t in tables)
    assert len(views) == len(set(views)) and all(v.doc for k in KINDS for v in k.views)
    for k in ANALYSES:
        assert typing.get_args(k.spec.model_fields["kind"].annotation) == (k.name,)
        assert k.attach != "study" or k.build is not None, k.name


def test_the_spec_package_imports_no_torch_and_runs_nothing():
    code = "import sys, sbif_dsl.spec; print(sorted(m for m in ('torch', 'duckdb', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_spec_regex_rule_says_how_it_matches_and_its_default_keeps_old_keys():
    from sbif_dsl.spec.models import TokenClasses
    from sbif_dsl.stages.tokens import rules

    def classes(**rule):
        return TokenClasses(
            structural="none", induction=False, rules={"d": {"kind": "regex", "pattern": "[0-9]", **rule}}
        )

    full = rules(classes(mode="fullmatch"), REPO)["d"]
    search = rules(classes(), REPO)["d"]
    assert full._hit("", "7") and not full._hit("", "7a") and search._hit("", "a7")
    assert classes(mode="search").key_params() == classes().key_params()
    assert (
        "mode" not in classes().key_params()["rules"]["d"]
        and classes(mode="match").key_params() != classes().key_params()
    )


def test_cumulative_bif_is_the_trapezoid_integral_of_its_inputs(tmp_path):
    import numpy as np

    from sbif_dsl.stages import cumulative_bif
    from sbif_dsl.stages.base import Inputs, Stage
    from sbif_dsl.stages.bif import read_matrices, write_matrices

    rng = np.random.default_rng(0)
    steps, files, values, ses = [2, 5, 11], {}, [], []
    for k in range(len(steps)):
        cov, se = rng.normal(size=(3, 2)), rng.uniform(0.1, 1, size=(3, 2))
        (tmp_path / f"b{k}").mkdir()
        write_matrices(tmp_path / f"b{k}" / "bif.npz", {"bif_cov": (cov, se, 7 - k), "bif_corr": (cov, se, 7 - k)})
        files[f"k{k}"] = {"bif.npz": tmp_path / f"b{k}" / "bif.npz"}
        values.append(cov)
        ses.append(se)
    stage = Stage("cumulative_bif", 1, {"steps": steps, "source": "train", "target": "train"}, tuple(files))
    out = cumulative_bif.run(stage, Inputs(files), None, tmp_path)
    w = [2 + 3 / 2, 3 / 2 + 6 / 2, 6 / 2]  # t_0 before the first checkpoint, then trapezoids
    expect = sum(wk * v for wk, v in zip(w, values))
    expect_se = np.sqrt(sum((wk * s) ** 2 for wk, s in zip(w, ses)))
    rows = out.tables["r_cumulative_bif"]
    np.testing.assert_allclose(rows["bif_cov"], expect.ravel(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(rows["bif_cov_se"]), expect_se.ravel(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(rows["bif_cov_hi"]) - rows["bif_cov"], 2.571 * expect_se.ravel(), rtol=1e-12)
    theta, se, df = read_matrices(Inputs({"c": {"bif.npz": out.artifacts["bif.npz"]}}), "c")["bif_cov"]
    assert np.allclose(theta, expect) and np.allclose(se, expect_se) and df == 5  # the fewest of 7, 6, 5


def test_every_view_is_bitwise_the_same_for_identical_runs(tmp_path):
    """Statistics are computed in stages, not at query time (DuckDB's parallel sums vary in the last digits)."""
    import polars as pl

    from sbif_dsl.store import fetch_frame
    from sbif_dsl.store.views import view_docs

    from .conftest import sbif

    spec = write_spec(tmp_path, TINY_SPEC + "  - {kind: loo}\n  - {kind: cumulative_bif}\n  - {kind: agreement}\n")
    frames = []
    for run in ("a", "b"):
        cache = tmp_path / run / "sbif.duckdb"
        sbif("run", str(spec), cache=cache)
        with Store(cache).connect(read_only=True) as con:
            frames.append(
                {
                    v: fetch_frame(con, f"SELECT * FROM {v}").drop(
                        ["created_at", "wall_s", "updated_at", "spec_path", "threads", "host"], strict=False
                    )
                    for v in view_docs()
                }
            )
    checked = 0
    for view, a in frames[0].items():
        b = frames[1][view]
        if a.height:
            checked += 1
        a, b = a.sort(a.columns, nulls_last=True), b.sort(b.columns, nulls_last=True)
        assert a.equals(b, null_equal=True), view
    assert checked >= 12 and frames[0]["agreement"].height > 0 and pl.Float64 in frames[0]["agreement"].dtypes

"""Stages are functions of their declared inputs: every stage kind, run in a fresh process from only what the
executor would send a Ray worker (params, input artifact bytes, the spec), gives bitwise the warm run's outputs.
The cache folder is moved away before the fresh process starts, so nothing can be read from it."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys

import duckdb
import pytest

from sbif_dsl.calibrate import build_stage
from sbif_dsl.executor import _record
from sbif_dsl.plan import build_plan
from sbif_dsl.runtime import Runtime
from sbif_dsl.spec import load_spec
from sbif_dsl.stages import WorkerContext
from sbif_dsl.store import Store

from .conftest import REPO, TINY_SPEC, sbif, write_spec
from .test_lm_e2e import LM_SPEC

TOY = TINY_SPEC + (
    "  - {kind: loo, left_out: [item0, item3]}\n  - {kind: agreement, bif: bif, loo: loo}\n"
    "  - {kind: lds, subsets: 2, bif: train_on_left, bootstrap: 50}\n"
)


def _fresh_outputs(tmp_path, spec_path, cache, calibrate: bool):
    """Plan against the warm cache, pack every stage as its own unit with its inputs' bytes, move the cache away,
    run the units in a new interpreter; returns (stages, outputs {key: (output, artifact bytes)}, moved cache)."""
    rt, store = Runtime(load_spec(spec_path)), Store(cache)
    plan = build_plan(rt, store)
    assert not plan.missing
    stages = list(plan.stages)
    if calibrate:
        ds, ckpt = stages[0], [s for s in stages if s.kind == "checkpoint"][-1]
        stages.append(build_stage(rt, ckpt, ds.key, rt.study.sampler))
        assert stages[-1].key in store.complete_keys([stages[-1].key])
    units = []
    for stage in stages:
        files = store.artifact_files(list(stage.needs()))
        units.append(([stage], {k: {n: p.read_bytes() for n, p in arts.items()} for k, arts in files.items()}))
    job = {"ctx": WorkerContext(spec=rt.spec, dataset_digest=rt.dataset_digest), "units": units}
    (tmp_path / "job.pkl").write_bytes(pickle.dumps(job))
    moved = tmp_path / "moved"
    cache.parent.rename(moved)
    runner = REPO / "tests" / "fresh_stage_runner.py"
    args = [sys.executable, str(runner), str(tmp_path / "job.pkl"), str(tmp_path / "out.pkl")]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = {key: (output, arts) for key, output, arts in pickle.loads((tmp_path / "out.pkl").read_bytes())}
    return stages, out, moved / cache.name


def _assert_bitwise(tmp_path, stages, out, warm_db):
    """Artifacts: same sha256 as committed. Rows: committed into a new store, equal to the warm cache's rows."""
    fresh = Store(tmp_path / "fresh" / "c.duckdb")
    fresh.init()
    warm = duckdb.connect(str(warm_db), read_only=True)
    for stage in stages:
        output, arts = out[stage.key]
        committed = dict(warm.execute("SELECT name, sha256 FROM artifacts WHERE key = ?", [stage.key]).fetchall())
        assert {n: hashlib.sha256(b).hexdigest() for n, b in arts.items()} == committed, stage.label
        folder = tmp_path / "staged" / stage.key
        folder.mkdir(parents=True)
        for name, data in arts.items():
            (folder / name).write_bytes(data)
        output.artifacts = {name: folder / name for name in arts}
        fresh.commit(_record(stage, _Result()), output)
    keys = [s.key for s in stages]
    with fresh.connect(read_only=True, views=False) as con:
        for table in {t for s in stages for t in out[s.key][0].tables}:
            q = f"SELECT * FROM {table} WHERE list_contains(?, key) ORDER BY ALL"
            assert con.execute(q, [keys]).fetchall() == warm.execute(q, [keys]).fetchall(), table


class _Result:
    provenance, device, wall_s = {}, "cpu", 0.0


@pytest.mark.parametrize(
    ("text", "calibrate", "kinds"),
    [
        (TOY, True, {"dataset", "checkpoint", "sample", "bif", "llc", "loss_kernel", "loo", "agreement",
                     "lds_subset", "lds", "calibration"}),
        (LM_SPEC, False, {"dataset", "checkpoint", "token_classes", "sample", "class_bif", "bif", "token_bif",
                          "induction_score", "class_loss"}),
    ],
    ids=["toy", "lm"],
)  # fmt: skip
def test_every_stage_kind_reproduces_bitwise_in_a_fresh_process(tmp_path, text, calibrate, kinds):
    spec = write_spec(tmp_path, text)
    cache = tmp_path / "warm" / "c.duckdb"
    sbif("run", str(spec), cache=cache)
    if calibrate:
        sbif("calibrate", str(spec), cache=cache)
    stages, out, moved = _fresh_outputs(tmp_path, spec, cache, calibrate)
    assert {s.kind for s in stages} == kinds
    _assert_bitwise(tmp_path, stages, out, moved)


TEXT_SPEC = """\
name: text
device: cpu
data: {kind: text_files, paths: [corpus.txt], context: 8}
model: {kind: transformer, n_layers: 1, n_heads: 1, d_model: 8}
training: {lr: 0.01, steps: 2, checkpoints: {steps: [2]}}
observables: [{name: query, data: query}]
analyses: [{kind: bif, source: query}]
"""


def test_a_cached_runtime_is_rebuilt_when_its_data_file_changed(tmp_path):
    """A long-lived worker keeps a Runtime per spec; the plan's dataset digest tells it when a data file changed."""
    from sbif_dsl.runtime import runtime_for

    (tmp_path / "corpus.txt").write_text("abcdefgh ijklmnop " * 20)
    spec = load_spec(write_spec(tmp_path, TEXT_SPEC))
    old = runtime_for(spec)
    assert runtime_for(spec, old.dataset_digest) is old  # built once per process
    (tmp_path / "corpus.txt").write_text("qrstuvwx yz012345 " * 20)
    new_digest = Runtime(spec).dataset_digest
    assert new_digest != old.dataset_digest
    rebuilt = runtime_for(spec, new_digest)
    assert rebuilt is not old and rebuilt.dataset_digest == new_digest

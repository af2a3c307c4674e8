"""The CLI end to end on a tiny study: run, cache hits/misses, query formats, cache management, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest

from sbif_dsl.store import Store

from .conftest import REPO, TINY_SPEC, sbif, write_spec


def test_run_rerun_and_query(tmp_path, tiny_spec, cache_path):
    first = sbif("run", str(tiny_spec), cache=cache_path)
    assert "ran 19 stages, 0 cached" in first.stdout
    again = sbif("run", str(tiny_spec), cache=cache_path)
    assert "nothing to compute: all 19 stages cached" in again.stdout

    plan = sbif("plan", str(tiny_spec), cache=cache_path)
    assert "19 stages: 19 cached, 0 to run" in plan.stdout

    rows = json.loads(
        sbif(
            "query",
            "SELECT * FROM bif WHERE analysis = 'bif' ORDER BY step, source_idx, target_idx",
            "--format",
            "json",
            cache=cache_path,
        ).stdout
    )
    assert len(rows) == 3 * 4 * 4 and {r["step"] for r in rows} == {10, 30, 60}
    diag = [r for r in rows if r["source"] == r["target"]]
    assert all(abs(r["bif_corr"] + 1) < 1e-9 for r in diag)  # -Corr(l_i, l_i) = -1
    assert all(r["bif_cov"] < 0 for r in diag)  # -Var < 0
    cross = json.loads(
        sbif(
            "query",
            "SELECT DISTINCT target FROM bif WHERE analysis = 'train_on_left'",
            "--format",
            "json",
            cache=cache_path,
        ).stdout
    )
    assert {r["target"] for r in cross} == {"item0", "item1"}

    csv = sbif(
        "query", "SELECT step, chain, llc FROM llc ORDER BY step, chain", "--format", "csv", cache=cache_path
    ).stdout
    assert csv.splitlines()[0] == "step,chain,llc" and len(csv.splitlines()) == 1 + 3 * 3

    out = tmp_path / "traces.parquet"
    sbif("query", "SELECT * FROM loss_traces", "--format", "parquet", "--out", str(out), cache=cache_path)
    import polars as pl

    traces = pl.read_parquet(out)
    assert traces.height == 3 * (3 * 20 * 4 + 3 * 20 * 2)  # checkpoints × chains × draws × tracked samples
    assert set(traces["sample_name"].unique()) == {"item0", "item1", "item2", "item3"}

    table = sbif("query", "SELECT study, count(*) AS n FROM training_curve GROUP BY study", cache=cache_path).stdout
    assert "tiny" in table and "60" in table  # the batch loss of steps 0..59 (step 60's loss: checkpoints.train_loss)

    stages = json.loads(sbif("query", "SELECT * FROM stages", "--format", "json", cache=cache_path).stdout)
    assert all(s["torch_version"] and s["python_version"] and s["device"] == "cpu" for s in stages)
    assert all(s["wall_s"] is not None for s in stages)


def test_partial_recompute(tmp_path, tiny_spec, cache_path):
    sbif("run", str(tiny_spec), cache=cache_path)
    added = write_spec(tmp_path, TINY_SPEC.replace("steps: [10, 30, 60]", "steps: [10, 30, 45, 60]"), "added.yaml")
    out = sbif("run", str(added), cache=cache_path).stdout
    assert "ran 6 stages, 19 cached" in out  # one checkpoint + its sample + 4 analyses
    resampled = sbif("run", str(tiny_spec), "--set", "sampler.gamma=2000", cache=cache_path).stdout
    assert "ran 15 stages, 4 cached" in resampled  # dataset and 3 checkpoints reused: no retraining
    cosmetic = write_spec(tmp_path, TINY_SPEC.replace("name: tiny\n", "name: tiny\ntitle: Changed\n"), "c.yaml")
    assert "nothing to compute" in sbif("run", str(cosmetic), cache=cache_path).stdout


def test_added_checkpoint_resumes_training_bitwise(tmp_path, cache_path):
    """Training resumed from a cached checkpoint equals training straight through."""
    a = write_spec(tmp_path, TINY_SPEC.replace("steps: [10, 30, 60]", "steps: [60]"), "a.yaml")
    b = write_spec(tmp_path, TINY_SPEC.replace("steps: [10, 30, 60]", "steps: [10, 30, 60]"), "b.yaml")
    sbif("run", str(b), cache=cache_path)
    other = tmp_path / "other.duckdb"
    sbif("run", str(a), cache=other)
    q = "SELECT weights_sha256 FROM checkpoints WHERE step = 60"
    assert (
        sbif("query", q, "--format", "csv", cache=cache_path).stdout
        == sbif("query", q, "--format", "csv", cache=other).stdout
    )


def test_seeded_run_is_bitwise_deterministic(tmp_path, tiny_spec):
    c1, c2 = tmp_path / "one.duckdb", tmp_path / "two.duckdb"
    sbif("run", str(tiny_spec), cache=c1)
    sbif("run", str(tiny_spec), cache=c2)
    q = "SELECT step, observable, sample_idx, chain, draw, loss FROM loss_traces ORDER BY ALL"
    t1 = sbif("query", q, "--format", "csv", cache=c1).stdout
    t2 = sbif("query", q, "--format", "csv", cache=c2).stdout
    assert t1 == t2 and len(t1.splitlines()) > 1000
    seeded = tmp_path / "three.duckdb"
    sbif("run", str(tiny_spec), "--set", "seed=4", cache=seeded)
    assert sbif("query", q, "--format", "csv", cache=seeded).stdout != t1


def test_cache_ls_gc(tmp_path, tiny_spec, cache_path):
    sbif("run", str(tiny_spec), cache=cache_path)
    sbif("run", str(tiny_spec), "--set", "sampler.draws=10", cache=cache_path)
    ls = sbif("cache", "ls", cache=cache_path).stdout
    assert "(unreferenced)" in ls and ls.strip().endswith(str(cache_path))
    dry = sbif("cache", "gc", "--dry-run", cache=cache_path).stdout
    assert "would drop 15 stages" in dry
    assert "dropped 15 stages" in sbif("cache", "gc", cache=cache_path).stdout
    assert "(unreferenced)" not in sbif("cache", "ls", cache=cache_path).stdout
    # what the current spec references survived and is still complete
    assert "nothing to compute" in sbif("run", str(tiny_spec), "--set", "sampler.draws=10", cache=cache_path).stdout
    assert "0 bad stages" in sbif("cache", "verify", cache=cache_path).stdout
    assert "dropped 19 stages" in sbif("cache", "gc", "--older-than", "0s", cache=cache_path).stdout
    bad_age = sbif("cache", "gc", "--older-than", "soon", cache=cache_path, check=False)
    assert bad_age.returncode == 2 and "7d" in bad_age.stderr


def test_verify_detects_corrupt_artifact(tiny_spec, cache_path):
    sbif("run", str(tiny_spec), cache=cache_path)
    victim = next(Store(cache_path).objects.glob("*/*/traces.parquet"))
    assert victim.parent.parent.parent == cache_path.parent / "sbif.objects"  # this cache's own folder
    victim.write_bytes(b"garbage")
    proc = sbif("cache", "verify", cache=cache_path, check=False)
    assert proc.returncode == 1 and "1 bad stages" in proc.stdout
    sbif("cache", "verify", "--fix", cache=cache_path)
    assert "ran 1 stages" in sbif("run", str(tiny_spec), cache=cache_path).stdout


def test_run_recomputes_an_artifact_rewritten_in_place(tiny_spec, cache_path):
    """Same size, other bytes: `sbif run` notices (no `cache verify` needed), recomputes that stage only, and the
    queries read the recomputed traces."""
    sbif("run", str(tiny_spec), cache=cache_path)
    before = sbif("query", "SELECT count(*) AS n, sum(loss) AS s FROM loss_traces", cache=cache_path).stdout
    victim = next(Store(cache_path).objects.glob("*/*/traces.parquet"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    query = sbif("query", "SELECT sum(loss) FROM loss_traces", cache=cache_path, check=False)
    assert "fails its checksum" in query.stderr and "sbif run" in query.stderr and "Traceback" not in query.stderr
    if query.returncode:  # the damaged file broke the query: it names the stage and the fix, in one line
        assert "damaged" in query.stderr
    rerun = sbif("run", str(tiny_spec), cache=cache_path)
    assert "ran 1 stages" in rerun.stdout and "recomputing sample at step" in rerun.stderr
    assert "traces.parquet fails its checksum" in rerun.stderr
    assert sbif("query", "SELECT count(*) AS n, sum(loss) AS s FROM loss_traces", cache=cache_path).stdout == before
    assert sbif("cache", "verify", cache=cache_path).returncode == 0


def test_bad_sql_is_exit_2(cache_path):
    proc = sbif("query", "SELEC 1", cache=cache_path, check=False)
    assert proc.returncode == 2 and "SQL failed" in proc.stderr and "Traceback" not in proc.stderr


def test_second_writer_gets_clear_message(tiny_spec, cache_path):
    from sbif_dsl.store import Store

    store = Store(cache_path)
    with store.writer():
        proc = sbif("run", str(tiny_spec), cache=cache_path, check=False)
    assert proc.returncode == 1
    assert "being written by another sbif process" in proc.stderr and f"pid {os.getpid()}" in proc.stderr


def test_killed_run_leaves_nothing_half_written_and_resumes(tmp_path, cache_path):
    slow = write_spec(tmp_path, TINY_SPEC.replace("draws: 20", "draws: 3000"), "slow.yaml")
    env = {**os.environ, "SBIF_CACHE": str(cache_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbif_dsl.cli", "run", str(slow)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and done < 6:  # dataset + 3 checkpoints + first sample + an analysis
        time.sleep(0.3)
        if cache_path.exists():
            try:
                with duckdb.connect(str(cache_path), read_only=True) as con:
                    done = con.execute("SELECT count(*) FROM stage_registry").fetchone()[0]
            except duckdb.Error:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done >= 6
    with duckdb.connect(str(cache_path), read_only=True) as con:
        samples = con.execute("SELECT key FROM stage_registry WHERE kind = 'sample'").fetchall()
        for (key,) in samples:  # every registered sample stage has its rows and artifacts
            assert con.execute("SELECT count(*) FROM r_batch_losses WHERE key = ?", [key]).fetchone()[0] == 3 * 3000
            assert con.execute("SELECT count(*) FROM artifacts WHERE key = ?", [key]).fetchone()[0] == 3
        n_done = con.execute("SELECT count(*) FROM stage_registry").fetchone()[0]
    assert n_done < 19
    out = sbif("run", str(slow), "--set", "sampler.draws=3000", cache=cache_path).stdout
    assert f"{n_done} cached" in out


def test_python_factory_path(tmp_path, cache_path):
    spec = write_spec(
        tmp_path,
        """\
        name: user_code
        seed: 1
        device: cpu
        data:
          kind: python
          factory: tests.factories_for_tests:regression
          options: {n: 10, d: 3}
        model:
          kind: python
          factory: tests.factories_for_tests:linear
        training:
          lr: 0.1
          steps: 20
          checkpoints: {steps: [20], include_zero: false}
        observables:
          - {name: train, data: train}
          - {name: probe, data: probe}
        sampler: {eps: 1.0e-3, gamma: 100, nbeta: 10, chains: 2, draws: 30, burn_in: 10}
        analyses:
          - {kind: bif, source: train, target: probe}
        """,
    )
    sbif("run", str(spec), cache=cache_path)
    rows = json.loads(sbif("query", "SELECT * FROM bif", "--format", "json", cache=cache_path).stdout)
    assert len(rows) == 10 * 3 and {r["target"] for r in rows} == {"probe_a", "probe_b", "probe_c"}
    assert all(np.isfinite(r["bif_cov"]) for r in rows)

    bad_ref = write_spec(tmp_path, spec.read_text().replace("data: probe", "data: probes"), "ref.yaml")
    proc = sbif("run", str(bad_ref), cache=cache_path, check=False)
    assert proc.returncode == 2 and "ref.yaml:17: observables.1.data: no data set 'probes'" in proc.stderr

    scalar = write_spec(tmp_path, spec.read_text().replace(":regression", ":regression_with_scalar_loss"), "s.yaml")
    proc = sbif("run", str(scalar), cache=cache_path, check=False)
    assert (
        proc.returncode == 2 and "regression_with_scalar_loss" in proc.stderr and "not a summed scalar" in proc.stderr
    )

    wrong = write_spec(tmp_path, spec.read_text().replace(":regression", ":not_a_dataset"), "w.yaml")
    proc = sbif("run", str(wrong), cache=cache_path, check=False)
    assert (
        proc.returncode == 2 and "not_a_dataset" in proc.stderr and "must return sbif_dsl.task.Dataset" in proc.stderr
    )

    missing = write_spec(
        tmp_path, spec.read_text().replace("tests.factories_for_tests:linear", "nowhere.mod:linear"), "m.yaml"
    )
    proc = sbif("run", str(missing), cache=cache_path, check=False)
    assert proc.returncode == 2 and "cannot import module 'nowhere.mod'" in proc.stderr


def test_divergent_chain_is_reported_and_not_stored(tmp_path, cache_path):
    spec = write_spec(
        tmp_path,
        TINY_SPEC.replace("eps: 1.0e-4", "eps: 0.5")
        .replace("gamma: 1000", "gamma: 0")
        .replace("nbeta: 100", "nbeta: 1.0e+6"),
    )
    proc = sbif("run", str(spec), cache=cache_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "checkpoint step 10: chain" in proc.stderr and "smaller sampler.eps" in proc.stderr
    q = sbif("query", "SELECT count(*) AS n FROM stages WHERE kind = 'sample'", "--format", "csv", cache=cache_path)
    assert q.stdout.splitlines()[1] == "0"


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_query_to_file(tmp_path, tiny_spec, cache_path, fmt):
    sbif("run", str(tiny_spec), cache=cache_path)
    out = tmp_path / f"out.{fmt}"
    sbif("query", "SELECT * FROM llc_summary", "--format", fmt, "--out", str(out), cache=cache_path)
    assert "llc_mean" in out.read_text()


def test_a_cache_in_the_working_folder_serves_its_traces(tmp_path):
    """`--cache c.duckdb` (a bare file name: the cache's folder is "."): the loss_traces view finds its Parquet
    files. It used to come back empty there, every other view intact (the file match needed a '/' before the
    artifact's relative path)."""
    write_spec(tmp_path)
    sbif("run", "spec.yaml", "--cache", "c.duckdb", "-q", cwd=tmp_path)
    sql = "SELECT count(*) AS n FROM loss_traces"
    out = sbif("query", sql, "--cache", "c.duckdb", "--format", "json", cwd=tmp_path)
    assert json.loads(out.stdout)[0]["n"] == 3 * 3 * 20 * (4 + 2)  # checkpoints × chains × draws × (train + left)

"""The cache under a full disk: one line and exit 1, nothing half-written counts as done, and the run resumes to
bitwise the results of a run that never failed (a small tmpfs in a private mount namespace; needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from sbif_dsl.store import Store, fetch_frame

from .conftest import REPO, sbif, write_spec

VIEWS = ("bif", "llc_summary", "loss_kernel", "checkpoints", "diagnostics")


def _namespace_problem() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare to mount a private tmpfs"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}"


def _frames(cache):
    with Store(cache).connect(read_only=True) as con:
        return {v: fetch_frame(con, f"SELECT * FROM {v}").drop(["wall_s"], strict=False) for v in VIEWS}


@pytest.mark.parametrize("size", ["1200k", "2m"])  # full while DuckDB grows its WAL / while a stage writes files
def test_disk_full_is_one_line_and_the_run_resumes_bitwise(tmp_path, size):
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    spec = write_spec(tmp_path)
    reference = tmp_path / "ref" / "sbif.duckdb"
    sbif("run", str(spec), cache=reference)
    mnt = tmp_path / "small"
    mnt.mkdir()
    cache = mnt / "sbif.duckdb"
    sbif_cmd = f"{sys.executable} -m sbif_dsl.cli run {spec} --cache {cache} -q"
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {mnt} && cd {REPO} && "
        f"{sbif_cmd} > {tmp_path}/full.out 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc; "
        f"mount -o remount,size=256m {mnt} && {sbif_cmd} > {tmp_path}/again.out 2>&1; echo $? > {tmp_path}/again.rc; "
        f"cp -r {mnt} {tmp_path}/copy"  # the tmpfs vanishes with the namespace
    )
    subprocess.run(["unshare", "-m", "sh", "-c", script], check=True, timeout=300)
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", err
    assert "No space left on device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "run again" in err
    assert (tmp_path / "again.rc").read_text().strip() == "0", (tmp_path / "again.out").read_text()
    resumed = tmp_path / "copy" / "sbif.duckdb"
    assert sbif("cache", "verify", cache=resumed).returncode == 0
    for view, a in _frames(reference).items():
        b = _frames(resumed)[view]
        assert a.sort(a.columns).equals(b.sort(b.columns), null_equal=True), view


def _all_views(cache) -> dict:
    from sbif_dsl.store.views import view_docs

    volatile = ["created_at", "wall_s", "updated_at", "spec_path", "threads", "host", "key", "label"]
    with Store(cache).connect(read_only=True) as con:
        return {v: fetch_frame(con, f"SELECT * FROM {v}").drop(volatile, strict=False) for v in view_docs()}


def _same_views(a, b) -> None:
    for view, fa in a.items():
        fb = b[view]
        assert fa.sort(fa.columns, nulls_last=True).equals(fb.sort(fb.columns, nulls_last=True), null_equal=True), view


def test_kill_9_at_random_moments_then_rerun_gives_bitwise_the_same_views(tmp_path):
    """SIGKILL `sbif run` at several moments (seeded), and `sbif cache gc` once, then run again: every view equals
    an uninterrupted run's."""
    import random
    import signal
    import time

    from .conftest import TINY_SPEC

    spec = write_spec(tmp_path, TINY_SPEC + "  - {kind: loo}\n  - {kind: agreement}\n")
    reference = tmp_path / "ref" / "sbif.duckdb"
    t0 = time.perf_counter()
    sbif("run", str(spec), cache=reference, subprocess_=True)  # timed as the killed runs start: a fresh process
    full = time.perf_counter() - t0
    cache = tmp_path / "killed" / "sbif.duckdb"
    env = {**os.environ, "SBIF_CACHE": str(cache)}
    rng = random.Random(7)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sbif_dsl.cli", "run", str(spec), "-q"], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(0.3, 1.0) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    gc = subprocess.Popen([sys.executable, "-m", "sbif_dsl.cli", "cache", "gc"], cwd=REPO, env=env)
    time.sleep(rng.uniform(0.5, 2.0))
    gc.send_signal(signal.SIGKILL)
    gc.wait()
    sbif("run", str(spec), cache=cache)
    assert "nothing to compute" in sbif("run", str(spec), cache=cache).stdout
    assert sbif("cache", "verify", cache=cache).returncode == 0
    _same_views(_all_views(reference), _all_views(cache))


def test_read_only_cache_refuses_to_write_in_one_line_and_still_answers_queries(tmp_path):
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    spec = write_spec(tmp_path)
    mnt = tmp_path / "ro"
    mnt.mkdir()
    cli = f"{sys.executable} -m sbif_dsl.cli"
    cache = mnt / "sbif.duckdb"
    script = (
        f"mount -t tmpfs -o size=64m tmpfs {mnt} && cd {REPO} && {cli} run {spec} --cache {cache} -q > /dev/null && "
        f"mount -o remount,ro {mnt} && "
        f"{{ {cli} run {spec} --cache {cache} --set sampler.gamma=2000 2> {tmp_path}/run.err; "
        f"echo $? > {tmp_path}/run.rc; }}; "
        f"{cli} query 'SELECT count(*) AS n FROM bif' --format csv --cache {cache} > {tmp_path}/q.out; "
        f"echo $? > {tmp_path}/q.rc"
    )
    subprocess.run(["unshare", "-m", "sh", "-c", script], check=True, timeout=300)
    err = (tmp_path / "run.err").read_text()
    assert (tmp_path / "run.rc").read_text().strip() == "1" and "Read-only file system" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (tmp_path / "q.rc").read_text().strip() == "0" and (tmp_path / "q.out").read_text().split()[1] == "72"


def test_kill_9_during_calibrate_then_rerun_gives_the_same_calibration(tmp_path):
    import signal
    import time

    spec = write_spec(tmp_path)
    grid = ["--grid", "eps=1e-5,1e-4,1e-3", "--checkpoint", "30"]
    reference = tmp_path / "ref" / "sbif.duckdb"
    t0 = time.perf_counter()
    sbif("calibrate", str(spec), *grid, cache=reference)
    full = time.perf_counter() - t0
    cache = tmp_path / "killed" / "sbif.duckdb"
    env = {**os.environ, "SBIF_CACHE": str(cache)}
    for frac in (0.5, 0.8):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sbif_dsl.cli", "calibrate", str(spec), *grid, "-q"], cwd=REPO, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(frac * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    sbif("calibrate", str(spec), *grid, cache=cache)
    cols = "step, method, eps, gamma, nbeta, llc_mean, llc_std, trend, half_shift, stationary, acceptance, divergences"
    q = f"SELECT {cols} FROM calibration ORDER BY eps"
    assert (
        sbif("query", q, "--format", "csv", cache=cache).stdout
        == sbif("query", q, "--format", "csv", cache=reference).stdout
    )

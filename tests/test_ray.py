"""The Ray executor against a real Ray cluster, always inside a loopback-only network namespace (tests/netns.py):
bitwise equal to the local executor, two nodes, a worker killed mid-task, a killed driver resumed, a stage that
fails deterministically. Every stage's provenance must say it ran on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import duckdb
import pytest

from .conftest import REPO, TINY_SPEC, sbif, write_spec
from .netns import ISOLATION_PROBLEM, kill_namespace, namespace_of, popen_isolated, run_isolated
from .test_lm_e2e import LM_SPEC

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.skipif(ISOLATION_PROBLEM is not None, reason=f"{ISOLATION_PROBLEM}")]

TOY = TINY_SPEC + "  - {kind: loo, left_out: [item0, item3]}\n  - {kind: agreement, bif: bif, loo: loo}\n"
SLOW_TOY = TOY.replace("draws: 20", "draws: 3000")  # sample stages of ~1 s: long enough to kill a worker in one


def sbif_isolated(*args: str, cache, timeout: float = 300, check: bool = True):
    env = {**os.environ, "SBIF_CACHE": str(cache)}
    proc = run_isolated([sys.executable, "-m", "sbif_dsl.cli", *args], env=env, cwd=REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sbif {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_same_cache(a, b) -> None:
    """Same stage keys, artifact checksums and result rows (bitwise) in two caches."""
    ca, cb = duckdb.connect(str(a), read_only=True), duckdb.connect(str(b), read_only=True)
    for q in ("SELECT key FROM stage_registry ORDER BY key", "SELECT key, name, sha256 FROM artifacts ORDER BY ALL"):
        assert ca.execute(q).fetchall() == cb.execute(q).fetchall(), q
    tables = [t for (t,) in ca.execute("SELECT table_name FROM duckdb_tables()").fetchall() if t.startswith("r_")]
    assert len(tables) > 10
    for t in tables:
        q = f"SELECT * FROM {t} ORDER BY ALL"
        assert ca.execute(q).fetchall() == cb.execute(q).fetchall(), t


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """The local executor's results (the reference every Ray run must equal bitwise), each spec run once per module."""
    done: dict[str, object] = {}

    def run(text: str):
        if text not in done:
            folder = tmp_path_factory.mktemp("local")
            spec, cache = write_spec(folder, text), folder / "c.duckdb"
            sbif("run", str(spec), "--threads", "1", cache=cache)
            done[text] = cache
        return done[text]

    return run


def ray_provenance(cache) -> list[tuple]:
    with duckdb.connect(str(cache), read_only=True) as con:
        cols = "provenance->>'node_ip', provenance->>'node_id', provenance->>'threads'"
        return con.execute(f"SELECT kind, device, {cols} FROM stage_registry").fetchall()


def committed(cache) -> int:
    try:
        with duckdb.connect(str(cache), read_only=True) as con:
            return con.execute("SELECT count(*) FROM stage_registry").fetchone()[0]
    except duckdb.Error:  # the writer holds the file for a moment
        return -1


@pytest.mark.parametrize("text", [TOY, LM_SPEC], ids=["toy", "lm"])
def test_ray_results_are_bitwise_the_local_ones(tmp_path, text, local_runs):
    spec, local, ray_cache = write_spec(tmp_path, text), local_runs(text), tmp_path / "ray" / "c.duckdb"
    out = sbif_isolated("run", str(spec), "--executor", "ray", "--workers", "2", cache=ray_cache)
    assert "executor ray" in out.stdout
    assert_same_cache(local, ray_cache)
    prov = ray_provenance(ray_cache)
    assert {ip for _, _, ip, _, _ in prov} == {"127.0.0.1"} and {d for _, d, *_ in prov} == {"cpu"}
    assert {th for *_, th in prov} == {"1"}
    again = sbif_isolated("run", str(spec), "--executor", "ray", cache=ray_cache)
    assert "nothing to compute" in again.stdout


def test_cli_joins_a_running_cluster(tmp_path, local_runs):
    """`sbif run --ray-address HOST:PORT` against a head started with `ray start` (token auth on, as by default)."""
    spec, local, ray_cache = write_spec(tmp_path, TINY_SPEC), local_runs(TINY_SPEC), tmp_path / "ray" / "c.duckdb"
    cmd = [sys.executable, "-m", "sbif_dsl.cli", "run", str(spec), "--cache", str(ray_cache), "--executor", "ray"]
    proc = run_isolated([sys.executable, "-m", "tests.ray_head", "2", *cmd], cwd=REPO, timeout=300)
    assert proc.returncode == 0 and "executor ray" in proc.stdout, proc.stderr
    assert_same_cache(local, ray_cache)
    assert {ip for _, _, ip, _, _ in ray_provenance(ray_cache)} == {"127.0.0.1"}


def test_two_node_cluster(tmp_path, local_runs):
    """Stages spread over two worker nodes (the head offers no CPU); results as the local executor's."""
    spec, local, ray_cache = write_spec(tmp_path, TOY), local_runs(TOY), tmp_path / "ray" / "c.duckdb"
    proc = run_isolated([sys.executable, "-m", "tests.ray_two_nodes", str(spec), str(ray_cache)], cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(summary["nodes"]) == 3 and set(summary["nodes"]) == {"127.0.0.1"}
    assert_same_cache(local, ray_cache)
    prov = ray_provenance(ray_cache)
    assert len({node for *_, node, _ in prov}) == 2  # both worker nodes ran stages


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _ray_workers_busy(ns: str) -> list[int]:
    """Pids of Ray worker processes in namespace ns running a unit (Ray titles them by task) and computing (their
    CPU time grows over 0.3 s)."""
    workers = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if os.readlink(f"/proc/{p}/ns/net") == ns and f.read().startswith(b"ray::_run_unit_task"):
                    workers.append((int(p), _cpu_ticks(int(p))))
        except OSError:
            pass
    time.sleep(0.3)
    busy = []
    for pid, ticks in workers:
        try:
            if _cpu_ticks(pid) - ticks >= 10:  # >= 0.1 s of CPU in 0.3 s (clock ticks of 10 ms)
                busy.append(pid)
        except OSError:
            pass
    return busy


def _start_slow_ray_run(tmp_path, local_runs):
    """The slow toy run locally (the reference), then started as a Ray driver in its own namespace."""
    spec, local, ray_cache = write_spec(tmp_path, SLOW_TOY), local_runs(SLOW_TOY), tmp_path / "ray" / "c.duckdb"
    env = {**os.environ, "SBIF_CACHE": str(ray_cache)}
    args = [sys.executable, "-m", "sbif_dsl.cli", "run", str(spec), "--executor", "ray", "--workers", "2"]
    driver = popen_isolated(args, env=env, cwd=REPO)
    return spec, local, ray_cache, driver, namespace_of(driver.pid)


def test_worker_killed_mid_task_is_retried(tmp_path, local_runs):
    _, local, ray_cache, driver, ns = _start_slow_ray_run(tmp_path, local_runs)
    killed, deadline, seen = None, time.time() + 120, []
    while killed is None and time.time() < deadline and driver.poll() is None:
        n = committed(ray_cache)
        busy = _ray_workers_busy(ns) if n >= 4 else []  # a sample stage is running
        seen.append((n, len(busy)))
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            killed = busy[0]
        time.sleep(0.05)
    out, err = driver.communicate(timeout=300)
    assert killed is not None, f"no busy worker seen: {sorted(set(seen))}\n{err}"
    assert driver.returncode == 0, err
    assert_same_cache(local, ray_cache)


def test_killed_driver_leaves_committed_stages_and_resumes(tmp_path, local_runs):
    spec, local, ray_cache, driver, ns = _start_slow_ray_run(tmp_path, local_runs)
    deadline = time.time() + 120
    while committed(ray_cache) < 6 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.1)
    driver.kill()
    driver.wait()
    kill_namespace(ns)  # Ray's agents outlive a SIGKILLed driver
    n_before = committed(ray_cache)
    assert 6 <= n_before < 19, n_before  # killed mid-run
    with duckdb.connect(str(ray_cache), read_only=True) as con:  # nothing half-written is registered
        for key, kind in con.execute("SELECT key, kind FROM stage_registry").fetchall():
            arts = con.execute("SELECT count(*) FROM artifacts WHERE key = ?", [key]).fetchone()[0]
            assert arts == {"sample": 3, "checkpoint": 1, "bif": 1, "loo": 1}.get(kind, 0), kind
    out = sbif_isolated("run", str(spec), "--executor", "ray", "--workers", "2", cache=ray_cache)
    assert f"{n_before} cached" in out.stdout
    assert_same_cache(local, ray_cache)


def test_deterministic_failure_is_reported_once_not_retried(tmp_path):
    spec = write_spec(tmp_path, TOY)
    cache = tmp_path / "ray" / "c.duckdb"
    diverge = ["--set", "sampler.eps=1", "--set", "sampler.gamma=1"]  # valid settings whose chains blow up
    proc = sbif_isolated("run", str(spec), "--executor", "ray", *diverge, cache=cache, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("became non-finite") == 1 and "Traceback" not in proc.stderr, proc.stderr
    with duckdb.connect(str(cache), read_only=True) as con:
        kinds = {k for (k,) in con.execute("SELECT DISTINCT kind FROM stage_registry").fetchall()}
    assert "sample" not in kinds and "checkpoint" in kinds


def test_a_sweep_runs_its_cells_on_one_ray_instance(tmp_path):
    """Cells run one after another on the same private Ray instance (one node id), bitwise the local run."""
    spec = write_spec(tmp_path, TINY_SPEC + "sweep:\n  grid:\n    sampler.gamma: [1000, 3000]\n")
    local, ray_cache = tmp_path / "local" / "c.duckdb", tmp_path / "ray" / "c.duckdb"
    sbif("run", str(spec), "--threads", "1", cache=local)
    out = sbif_isolated("run", str(spec), "--executor", "ray", "--workers", "2", cache=ray_cache)
    assert "of 2 cells" in out.stdout and "executor ray" in out.stdout, out.stdout
    assert_same_cache(local, ray_cache)
    prov = ray_provenance(ray_cache)
    assert len({node for _, _, _, node, _ in prov}) == 1 and {ip for _, _, ip, _, _ in prov} == {"127.0.0.1"}

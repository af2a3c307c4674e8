"""Shared fixtures: tiny seeded specs and an isolated cache per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY_SPEC = """\
name: tiny
seed: 3
device: cpu
data:
  kind: hierarchy
  branching: [2, 2]
  features_per_level: [2, 2, 1]
  query_sets:
    left: [item0, item1]
model:
  kind: deep_linear
  hidden: [6]
  init_scale: 0.01
training:
  lr: 0.2
  steps: 60
  checkpoints:
    steps: [10, 30, 60]
    include_zero: false
observables:
  - name: train
    data: train
  - name: left
    data: left
sampler:
  eps: 1.0e-4
  gamma: 1000
  nbeta: 100
  chains: 3
  draws: 20
  burn_in: 5
analyses:
  - kind: bif
  - kind: bif
    name: train_on_left
    source: train
    target: left
  - kind: llc
  - kind: loss_kernel
"""


DEMO_SPEC = REPO / "specs" / "toy_hierarchy.yaml"


@pytest.fixture
def one_thread():
    """Tiny models are overhead-bound: extra intra-op threads only add contention (as Runtime.thread_policy)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores for torch's intra-op threads: two workers of
    two threads each on two cores oversubscribe, and a test that trains (the induction heads) runs 3x slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the subprocesses a test starts
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, worker_id) -> Path:
    """The demo study (specs/toy_hierarchy.yaml as shipped), run once per session: read it, or `copy_cache` it.

    Under pytest-xdist the first worker to need it runs it, under a file lock in the folder all workers share;
    the others wait and read the same closed cache (a `done` marker, written last, says it is complete)."""
    if worker_id == "master":
        cache = tmp_path_factory.mktemp("demo") / "sbif.duckdb"
        sbif("run", str(DEMO_SPEC), "-q", cache=cache)
        return cache
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "demo-shared"
    shared.mkdir(exist_ok=True)
    cache, done = shared / "sbif.duckdb", shared / "done"
    with FileLock(str(shared / "lock")):
        if not done.exists():
            sbif("run", str(DEMO_SPEC), "-q", cache=cache)
            done.touch()
    return cache


def copy_cache(src: Path, dest: Path) -> Path:
    """A writable copy of a closed cache (its DuckDB file and its objects folder) at dest (a .duckdb path)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    if Path(f"{src}.wal").exists():
        shutil.copy2(f"{src}.wal", f"{dest}.wal")
    shutil.copytree(src.with_suffix(".objects"), dest.with_suffix(".objects"))
    return dest


def write_spec(tmp_path: Path, text: str = TINY_SPEC, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def tiny_spec(tmp_path) -> Path:
    return write_spec(tmp_path)


@pytest.fixture
def cache_path(tmp_path) -> Path:
    return tmp_path / "cache" / "sbif.duckdb"


class CliResult:
    """What a finished `sbif` call returns, in-process or not: the fields of subprocess.CompletedProcess tests read."""

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str):
        self.args, self.returncode, self.stdout, self.stderr = args, returncode, stdout, stderr


def _in_process(args: list[str], env: dict[str, str], cwd: Path) -> CliResult:
    """The real click command, run in this process by click's own test runner (no torch import per call).

    Anything the CLI lets escape (a bug: it must map every error to a line) is printed as the traceback a user
    would see, so tests asserting "no traceback" keep their teeth."""
    from click.testing import CliRunner

    from sbif_dsl.cli import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, args, env=env, catch_exceptions=True)
    finally:
        os.chdir(old)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return CliResult(["sbif", *args], result.exit_code, result.stdout, stderr)


def sbif(
    *args: str,
    cache: Path | None = None,
    check: bool = True,
    cwd: Path | None = None,
    env: dict | None = None,
    subprocess_: bool = False,
):
    """Run the real CLI (what a user runs): in this process by default, in a fresh `python -m sbif_dsl.cli` when
    `subprocess_` (a test of process-level behaviour: imports, signals, a clean interpreter) or SBIF_TEST_SUBPROCESS=1
    (the whole suite through real processes)."""
    extra = {**(env or {})}
    if cache is not None:
        extra["SBIF_CACHE"] = str(cache)
    if subprocess_ or os.environ.get("SBIF_TEST_SUBPROCESS"):
        proc = subprocess.run(
            [sys.executable, "-m", "sbif_dsl.cli", *args],
            capture_output=True,
            text=True,
            cwd=cwd or REPO,
            env={**os.environ, **extra},
        )
    else:
        proc = _in_process(list(args), extra, Path(cwd or REPO))
    if check and proc.returncode != 0:
        raise AssertionError(f"sbif {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc

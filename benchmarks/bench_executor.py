"""Local executor vs Ray with 1 and 2 workers on this machine: wall time from an empty cache, speed-up, and a check
that every backend stored bitwise the same results. Run by hand from the repository root:

    .venv/bin/python benchmarks/bench_executor.py                      # the toy demo
    .venv/bin/python benchmarks/bench_executor.py --workloads toy,lm   # and specs/induction_lm.yaml (~15 min)

Ray runs inside a loopback-only network namespace (tests/netns.py), as in the tests. Each run is the real CLI
(`sbif run SPEC --executor ...`) into a fresh cache; the local baseline is measured in the same invocation, with
one thread per stage like each Ray task (`--threads 1`), so the results can be compared bitwise.
Prints a table and writes benchmarks/results/executor.json. Also prints measured per-kind stage times, the input
of the scaling estimate in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.netns import ISOLATION_PROBLEM, run_isolated  # noqa: E402

WORKLOADS = {"toy": "specs/toy_hierarchy.yaml", "lm": "specs/induction_lm.yaml"}


def run(spec: str, cache: Path, executor: str, workers: int | None) -> float:
    """Wall seconds of one `sbif run` from an empty cache. executor: local | ray (a private Ray instance started
    and stopped by the run) | cluster (a Ray cluster of `workers` CPUs already running, as a user's would be)."""
    args = [sys.executable, "-m", "sbif_dsl.cli", "run", spec, "--cache", str(cache), "-q"]
    if executor == "local":
        t0 = time.perf_counter()
        proc = subprocess.run(args + ["--threads", "1"], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    elif executor == "ray":
        t0 = time.perf_counter()
        proc = run_isolated(args + ["--executor", "ray", "--workers", str(workers)], cwd=REPO, timeout=3600)
        wall = time.perf_counter() - t0
    else:  # the cluster starts, then the run is timed, inside one namespace (tests/ray_head.py)
        inner = [sys.executable, "-m", "tests.ray_head", str(workers), *args, "--executor", "ray"]
        proc = run_isolated(inner, cwd=REPO, timeout=3600)
        wall = float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0.0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} ({executor}) failed:\n{proc.stderr[-3000:]}")
    return wall


def fingerprint(cache: Path) -> tuple:
    """Artifact checksums and every result row: equal fingerprints = bitwise equal results."""
    with duckdb.connect(str(cache), read_only=True) as con:
        arts = con.execute("SELECT key, name, sha256 FROM artifacts ORDER BY ALL").fetchall()
        tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall() if t.startswith("r_")]
        rows = tuple(tuple(con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()) for t in sorted(tables))
    return tuple(arts), rows


def stage_times(cache: Path) -> list[tuple]:
    with duckdb.connect(str(cache), read_only=True) as con:
        return con.execute(
            "SELECT kind, count(*), sum(wall_s), avg(wall_s) FROM stage_registry GROUP BY kind ORDER BY 3 DESC"
        ).fetchall()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="toy", help="comma list of: " + ", ".join(WORKLOADS))
    ap.add_argument("--repeat", type=int, default=1, help="alternating repetitions (medians reported)")
    args = ap.parse_args()
    if ISOLATION_PROBLEM:
        raise SystemExit(f"cannot isolate Ray on loopback here: {ISOLATION_PROBLEM}")
    modes = [("local", None), ("ray", 1), ("ray", 2), ("cluster", 2)]
    report = {"machine": {"cpus": os.cpu_count()}, "workloads": {}}
    for name in args.workloads.split(","):
        spec = WORKLOADS[name]
        walls: dict[str, list[float]] = {}
        prints = {}
        with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
            for r in range(args.repeat):
                for executor, workers in modes:
                    label = executor if workers is None else f"{executor} x{workers}"
                    cache = Path(tmp) / f"{label.replace(' ', '')}-{r}" / "c.duckdb"
                    walls.setdefault(label, []).append(run(spec, cache, executor, workers))
                    prints[label] = fingerprint(cache)
                    if executor == "local" and r == 0:
                        times = stage_times(cache)
                    print(f"{name}: {label} run {r + 1}: {walls[label][-1]:.1f} s", flush=True)
        median = {k: statistics.median(v) for k, v in walls.items()}
        same = len(set(prints.values())) == 1
        report["workloads"][name] = {
            "spec": spec,
            "wall_s": walls,
            "median_s": median,
            "speedup_vs_local": {k: median["local"] / v for k, v in median.items()},
            "bitwise_equal": same,
            "stage_times_local": [list(t) for t in times],
        }
        print(f"\n{name} ({spec}), medians of {args.repeat}:")
        for k, v in median.items():
            print(f"  {k:10s} {v:7.1f} s   speed-up vs local {median['local'] / v:4.2f}x")
        print(f"  results bitwise equal across backends: {same}")
        print("  per-kind stage times (local): kind, count, total s, mean s")
        for kind, n, total, mean in times:
            print(f"    {kind:16s} {n:4d} {total:8.2f} {mean:8.3f}")
    out = REPO / "benchmarks" / "results" / "executor.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

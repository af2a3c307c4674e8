"""Run units of stages in this (fresh) process from a pickle of (units, context, input bytes); pickle the results.

Used by test_pure_stages.py: the process sees only what the executor would send a Ray worker, never the cache.
"""

from __future__ import annotations

import pickle
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from sbif_dsl.executor import run_unit


def main(job_path: str, out_path: str) -> None:
    job = pickle.loads(Path(job_path).read_bytes())
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, (stages, blobs) in enumerate(job["units"]):
            files = {}
            for key, arts in blobs.items():
                folder = Path(tmp, "in", str(n), key)
                folder.mkdir(parents=True)
                files[key] = {}
                for name, data in arts.items():
                    (folder / name).write_bytes(data)
                    files[key][name] = folder / name
            results, error = run_unit(stages, job["ctx"], files, Path(tmp, "out", str(n)))
            if error is not None:
                raise error
            for r in results:
                arts = {name: p.read_bytes() for name, p in r.output.artifacts.items()}
                out.append((r.key, replace(r.output, artifacts={}), arts))
    Path(out_path).write_bytes(pickle.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Checkpoint stages for weights loaded from local files, keyed by file content (not name or path)."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from ..errors import UsageError
from ..hashing import canonical_json, file_sha256, sha256_hex
from ..store import StageOutput
from .base import Stage

VERSION = 1


def discover(session) -> list[tuple[int, Path]]:
    """(step, path) for every file matching the glob, sorted by step; duplicate steps are an error."""
    spec = session.study.checkpoints
    pattern = spec.glob if Path(spec.glob).is_absolute() else str(session.spec.base_dir / spec.glob)
    regex = re.compile(spec.step_pattern)
    found: dict[int, Path] = {}
    for p in sorted(glob.glob(pattern)):
        m = regex.search(Path(p).name)
        if not m:
            continue
        step = int(m.group(1))
        if step in found:
            raise UsageError(f"checkpoints.glob: steps collide: {found[step]} and {p} both give step {step}")
        found[step] = Path(p)
    if not found:
        raise UsageError(f"checkpoints.glob {spec.glob!r} matched no file with a step (pattern {spec.step_pattern!r})")
    return sorted(found.items())


def _content_hash(session, path: Path) -> str:
    """sha256 of the file (or of every file of a revision folder), memoised by (path, size, mtime)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digests = []
    for f in files:
        st = f.stat()
        memo_key = ("file_sha", str(f), st.st_size, st.st_mtime_ns)
        if memo_key not in session.memo:
            session.memo[memo_key] = file_sha256(f)
        digests.append([str(f.relative_to(path)) if path.is_dir() else "", session.memo[memo_key]])
    return digests[0][1] if not path.is_dir() else sha256_hex(canonical_json(digests))


def build(session, dataset_key: str) -> list[Stage]:
    stages = []
    for step, path in discover(session):
        stages.append(
            Stage(
                kind="checkpoint",
                version=VERSION,
                fields={"weights_file_sha256": _content_hash(session, path), "step": step},
                inputs=[],
                run=run,
                step=step,
                label=f"load step {step}",
                payload={"path": str(path)},
            )
        )
    return stages


def run(session, stage: Stage, out_dir: Path) -> StageOutput:
    state = session.load_state(stage.key, stage.payload["path"])
    module = session.new_module()
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(
            f"{stage.payload['path']}: weights do not fit the spec's model: {str(e).splitlines()[0]}"
        ) from None
    session.check_loss_contract(module)
    return StageOutput(
        tables={
            "r_checkpoints": {
                "step": [stage.step],
                "weights_sha256": [stage.fields["weights_file_sha256"]],
                "source": [stage.payload["path"]],
                "lineage": [None],
                "train_loss": [None],
            }
        }
    )

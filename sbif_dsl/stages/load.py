"""Checkpoint stages for weights loaded from local files, keyed by file content (not name or path).

The run copies the weights into the cache as `state.pt` (the state dict the spec's model loads), so every
later stage reads its checkpoint as a declared input, wherever it runs: no worker needs the user's files.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from ..errors import UsageError
from ..hashing import canonical_json, file_sha256, sha256_hex
from .base import Inputs, Stage, StageMeta, StageOutput
from .kind import Kind


def discover(rt) -> list[tuple[int, Path]]:
    """(step, path) for every file matching the glob, sorted by step; duplicate steps are an error."""
    spec = rt.study.checkpoints
    pattern = spec.glob if Path(spec.glob).is_absolute() else str(rt.spec.base_dir / spec.glob)
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


def _content_hash(path: Path) -> str:
    """sha256 of the file (or of every file of a revision folder)."""
    if not path.is_dir():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return sha256_hex(canonical_json([[str(f.relative_to(path)), file_sha256(f)] for f in files]))


def build(rt, dataset_key: str) -> list[Stage]:
    return [
        Stage(
            kind="checkpoint",
            runner="load",
            version=KIND.version,
            params={"weights_file_sha256": _content_hash(path), "step": step},
            inputs=(),
            meta=StageMeta(step=step, label=f"load step {step}", source=str(path)),
        )
        for step, path in discover(rt)
    ]


def read_weights(path: Path) -> dict:
    from ..runtime import load_state

    if path.is_dir():  # a Hugging Face revision folder
        from ..models.hf import hf_state

        return hf_state(path)
    return load_state(path)


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    from ..runtime import save_blob, state_digest

    path = Path(stage.meta.source)
    if _content_hash(path) != stage.params["weights_file_sha256"]:
        raise UsageError(f"{path}: the file changed since the plan was made; hint: run again")
    state = read_weights(path)
    module = rt.new_module()
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"{path}: weights do not fit the spec's model: {str(e).splitlines()[0]}") from None
    rt.check_loss_contract(module)
    model_state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_blob(model_state, out_dir / "state.pt")
    return StageOutput(
        tables={
            "r_checkpoints": {
                "step": [stage.step],
                "weights_sha256": [state_digest(model_state)],
                "source": [str(path)],
                "lineage": [None],
                "train_loss": [None],
            }
        },
        artifacts={"state.pt": out_dir / "state.pt"},
    )


# Writes the train kind's r_checkpoints rows (one checkpoint table, whichever way the weights came).
KIND = Kind(name="load", version=2, run="sbif_dsl.stages.load:run", model=True)  # 2: weights stored as state.pt

"""Dataset stage: the samples of every set, keyed by their content (so edited user data recomputes)."""

from __future__ import annotations

from pathlib import Path

from ..store import StageOutput
from .base import Stage

VERSION = 1


def build(session) -> Stage:
    return Stage(
        kind="dataset",
        version=VERSION,
        fields={"data": session.study.data.model_dump(mode="json"), "content": session.dataset_digest},
        inputs=[],
        run=run,
        label="dataset",
    )


def run(session, stage: Stage, out_dir: Path) -> StageOutput:
    rows: dict[str, list] = {"data_set": [], "sample_idx": [], "sample_name": []}
    for set_name, s in session.dataset.sets().items():
        rows["data_set"] += [set_name] * len(s)
        rows["sample_idx"] += list(range(len(s)))
        rows["sample_name"] += list(s.names)
    return StageOutput(tables={"r_samples": rows})

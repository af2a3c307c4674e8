"""Dataset stage: the samples of every set, keyed by their content (so edited user data recomputes)."""

from __future__ import annotations

from pathlib import Path

from .base import Inputs, Stage, StageMeta, StageOutput

VERSION = 1


def build(rt) -> Stage:
    return Stage(
        kind="dataset",
        version=VERSION,
        params={"data": rt.study.data.model_dump(mode="json"), "content": rt.dataset_digest},
        inputs=(),
        meta=StageMeta(label="dataset"),
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    rows: dict[str, list] = {"data_set": [], "sample_idx": [], "sample_name": []}
    for set_name, s in rt.dataset.sets().items():
        rows["data_set"] += [set_name] * len(s)
        rows["sample_idx"] += list(range(len(s)))
        rows["sample_name"] += list(s.names)
    return StageOutput(tables={"r_samples": rows})

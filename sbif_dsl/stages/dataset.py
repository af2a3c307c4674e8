"""Dataset stage: the samples of every set, keyed by their content (so edited user data recomputes)."""

from __future__ import annotations

from pathlib import Path

from .base import Inputs, Stage, StageMeta, StageOutput
from .kind import Kind, Table, View


def build(rt) -> Stage:
    return Stage(
        kind="dataset",
        version=KIND.version,
        params={"data": rt.study.data.key_params(), "content": rt.dataset_digest},
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


KIND = Kind(
    name="dataset",
    version=2,  # 2: keyed on the data block's declared fields
    run="sbif_dsl.stages.dataset:run",
    tables=(Table("r_samples", "data_set VARCHAR, sample_idx INTEGER, sample_name VARCHAR"),),
    views=(
        View(
            "samples",
            """
        SELECT ss.study, s.data_set, s.sample_idx, s.sample_name
        FROM {scope} JOIN r_samples s ON s.key = sr.key""",
            "samples of each data set (train and query sets)",
        ),
    ),
)

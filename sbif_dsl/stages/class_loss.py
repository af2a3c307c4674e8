"""`class_loss`: mean next-token loss per token class at each checkpoint (no sampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .class_bif import token_set_params
from .kind import AnalysisKind, Table, View


class ClassLossAnalysis(Base):
    """Mean next-token loss per token class at each checkpoint."""

    KEYED = ("observable",)

    kind: Literal["class_loss"] = Field(description="Per-class loss curve.")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL.")
    observable: str = Field(default="query", max_length=128, description="Observable whose tokens are scored.")


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import torch

    from .tokens import read_masks

    observable, data_set = stage.params["observable"], stage.params["data_set"]
    module = rt.module_at(inputs.file(stage.inputs[0], "state.pt")).eval()
    s = rt.dataset.sets()[data_set]
    losses = rt.losses(module, s).to(torch.float64)  # (n, T-1)
    names, masks = read_masks(inputs, stage.inputs[1], data_set)  # (classes, n, T-1)
    m = masks.to(torch.float64)
    counts = m.sum(dim=(1, 2))
    means = (m * losses).sum(dim=(1, 2)) / counts.clamp_min(1)
    return StageOutput(
        tables={
            "r_class_loss": {
                "observable": [observable] * len(names),
                "class": names,
                "loss": [float(v) if c > 0 else None for v, c in zip(means, counts)],
                "n_tokens": counts.to(torch.int64).tolist(),
            }
        }
    )


KIND = AnalysisKind(
    name="class_loss",
    version=3,  # 3: keyed on its declared fields (no name); 2: masks read from the token-classes input
    run="sbif_dsl.stages.class_loss:run",
    spec=ClassLossAnalysis,
    attach="checkpoint",
    model=True,
    references=("observable",),
    classes=True,
    params=token_set_params,
    tables=(Table("r_class_loss", "observable VARCHAR, class VARCHAR, loss DOUBLE, n_tokens BIGINT"),),
    views=(
        View(
            "class_loss",
            """
        SELECT ss.study, sr.step, ss.analysis, l.observable, l.class, l.loss, l.n_tokens
        FROM {scope} JOIN r_class_loss l ON l.key = sr.key""",
            "mean next-token loss per token class per checkpoint",
        ),
    ),
)

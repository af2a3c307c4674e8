"""`class_bif`: token-level BIF aggregated to class × class, in memory linear in tokens (SCIENCE.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .kind import AnalysisKind, Table, View
from .traces import read_traces


class ClassBifAnalysis(Base):
    """Token-level BIF aggregated to class × class in memory linear in tokens (SCIENCE.md §1)."""

    KEYED = ("observable",)

    kind: Literal["class_bif"] = Field(description="Class × class token influence.")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="Name in SQL.")
    observable: str = Field(default="query", description="Observable with per-token losses.")


def token_set_params(rt, analysis) -> dict:
    """The data set of the analysed observable, which must hold token sequences (shared by the LM analyses)."""
    from . import tokens

    return {"data_set": tokens.observable_token_set(rt, analysis.observable)}


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np

    from ..influence import class_bif
    from .tokens import read_masks

    observable = stage.params["observable"]
    trace = read_traces(inputs, stage.inputs[0])[observable]  # (chains, draws, n, T-1)
    names, masks = read_masks(inputs, stage.inputs[1], stage.params["data_set"])  # (classes, n, T-1)
    c, d = trace.shape[:2]
    neg_cov, neg_corr = class_bif(trace.reshape(c, d, -1), masks.reshape(len(names), -1))  # (classes, classes)
    sizes = masks.reshape(len(names), -1).sum(dim=1).tolist()
    i, j = (x.ravel() for x in np.indices((len(names), len(names))))
    return StageOutput(
        tables={
            "r_class_bif": {
                "observable": [observable] * i.size,
                "source_class": [names[k] for k in i],
                "target_class": [names[k] for k in j],
                "bif_cov": neg_cov.numpy().ravel(),
                "bif_corr": neg_corr.numpy().ravel(),
                "n_source": [sizes[k] for k in i],
                "n_target": [sizes[k] for k in j],
            }
        }
    )


KIND = AnalysisKind(
    name="class_bif",
    version=3,  # 3: keyed on its declared fields (no name); 2: masks read from the token-classes input
    run="sbif_dsl.stages.class_bif:run",
    spec=ClassBifAnalysis,
    attach="sample",
    references=("observable",),
    classes=True,
    params=token_set_params,
    tables=(
        Table(
            "r_class_bif",
            "observable VARCHAR, source_class VARCHAR, target_class VARCHAR, bif_cov DOUBLE, bif_corr DOUBLE, "
            "n_source BIGINT, n_target BIGINT",
        ),
    ),
    views=(
        View(
            "class_bif",
            """
        SELECT ss.study, sr.step, ss.analysis, b.observable, b.source_class, b.target_class, b.bif_cov, b.bif_corr,
               b.n_source, b.n_target
        FROM {scope} JOIN r_class_bif b ON b.key = sr.key""",
            "class x class token influence per checkpoint: bif_cov = -Cov, bif_corr = -Corr (block means)",
        ),
    ),
)

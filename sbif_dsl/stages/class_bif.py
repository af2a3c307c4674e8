"""`class_bif`: token-level BIF aggregated to class × class, in memory linear in tokens (SCIENCE.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .kind import AnalysisKind, Table, View, estimate_columns
from .traces import estimate_rows, read_traces


class ClassBifAnalysis(Base):
    """Token-level BIF aggregated to class × class in memory linear in tokens (SCIENCE.md §1)."""

    KEYED = ("observable",)

    kind: Literal["class_bif"] = Field(description="Class × class token influence.")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL.")
    observable: str = Field(default="query", max_length=128, description="Observable with per-token losses.")


def token_set_params(rt, analysis) -> dict:
    """The data set of the analysed observable, which must hold token sequences (shared by the LM analyses)."""
    from . import tokens

    return {"data_set": tokens.observable_token_set(rt, analysis.observable)}


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np

    from ..influence import class_bif
    from ..influence.uncertainty import jackknife
    from .tokens import read_masks

    observable = stage.params["observable"]
    trace = read_traces(inputs, stage.inputs[0])[observable]  # (chains, draws, n, T-1)
    names, masks = read_masks(inputs, stage.inputs[1], stage.params["data_set"])  # (classes, n, T-1)
    flat_masks = masks.reshape(len(names), -1)  # (classes, tokens)
    (neg_cov, cov_se, df), (neg_corr, corr_se, _) = jackknife(
        lambda t: class_bif(t.reshape(t.shape[0], t.shape[1], -1), flat_masks), trace
    )  # (classes, classes) each
    sizes = masks.reshape(len(names), -1).sum(dim=1).tolist()
    i, j = (x.ravel() for x in np.indices((len(names), len(names))))
    return StageOutput(
        tables={
            "r_class_bif": {
                "observable": [observable] * i.size,
                "source_class": [names[k] for k in i],
                "target_class": [names[k] for k in j],
                **estimate_rows("bif_cov", neg_cov, cov_se, df),
                **estimate_rows("bif_corr", neg_corr, corr_se, df),
                "n_source": [sizes[k] for k in i],
                "n_target": [sizes[k] for k in j],
            }
        }
    )


KIND = AnalysisKind(
    name="class_bif",
    # 4: standard errors and 95% intervals; 3: keyed on its declared fields (no name); 2: masks are an input
    version=4,
    run="sbif_dsl.stages.class_bif:run",
    spec=ClassBifAnalysis,
    attach="sample",
    references=("observable",),
    classes=True,
    params=token_set_params,
    tables=(
        Table(
            "r_class_bif",
            "observable VARCHAR, source_class VARCHAR, target_class VARCHAR, n_source BIGINT, n_target BIGINT, "
            + estimate_columns("bif_cov", "bif_corr"),
        ),
    ),
    views=(
        View(
            "class_bif",
            """
        SELECT ss.study, sr.step, ss.analysis, b.observable, b.source_class, b.target_class, b.bif_cov, b.bif_corr,
               b.n_source, b.n_target, b.bif_cov_se, b.bif_cov_lo, b.bif_cov_hi, b.bif_corr_se, b.bif_corr_lo,
               b.bif_corr_hi
        FROM {scope} JOIN r_class_bif b ON b.key = sr.key""",
            "class x class token influence per checkpoint: bif_cov = -Cov, bif_corr = -Corr (block means), with _se "
            "and 95% intervals _lo.._hi",
        ),
    ),
)

"""`loss_kernel`: Cov and Corr of an observable's losses with themselves over the draws (positive sign)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .kind import AnalysisKind, Table, View, estimate_columns
from .traces import estimate_rows, pairs, per_sample, read_traces


class LossKernelAnalysis(Base):
    """Loss kernel: Cov and Corr of an observable's losses with themselves (positive sign)."""

    KEYED = ("observable",)

    kind: Literal["loss_kernel"] = Field(description="Loss kernel (arXiv 2509.26537).")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL.")
    observable: str = Field(default="train", max_length=128, description="Observable to correlate with itself.")


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    from ..influence import loss_kernel
    from ..influence.uncertainty import jackknife

    observable = stage.params["observable"]
    (cov, cov_se, df), (corr, corr_se, _) = jackknife(
        loss_kernel, per_sample(read_traces(inputs, stage.inputs[0])[observable]), scales=("raw", "fisher_z")
    )  # (n, n) each; corr's SE and interval on Fisher's z
    i, j = pairs(*cov.shape)
    return StageOutput(
        tables={
            "r_loss_kernel": {
                "observable": [observable] * i.size,
                "i": i,
                "j": j,
                **estimate_rows("cov", cov, cov_se, df),
                **estimate_rows("corr", corr, corr_se, df, "fisher_z"),
            }
        }
    )


KIND = AnalysisKind(
    name="loss_kernel",
    # 4: corr's interval on Fisher's z (inside [-1, 1]), its _se the delta-method (1 - r²)·SE_z; 3: standard errors
    # and 95% intervals; 2: keyed on its declared fields (no name)
    version=4,
    run="sbif_dsl.stages.loss_kernel:run",
    spec=LossKernelAnalysis,
    attach="sample",
    references=("observable",),
    tables=(Table("r_loss_kernel", "observable VARCHAR, i INTEGER, j INTEGER, " + estimate_columns("cov", "corr")),),
    views=(
        View(
            "loss_kernel",
            """
        SELECT ss.study, sr.step, ss.analysis, k.observable, k.i, a.sample_name AS a, k.j, b.sample_name AS b,
               k.cov, k.corr, k.cov_se, k.cov_lo, k.cov_hi, k.corr_se, k.corr_lo, k.corr_hi
        FROM {scope} JOIN r_loss_kernel k ON k.key = sr.key
        JOIN r_tracked a ON a.key = sr.parent AND a.observable = k.observable AND a.sample_idx = k.i
        JOIN r_tracked b ON b.key = sr.parent AND b.observable = k.observable AND b.sample_idx = k.j""",
            "loss kernel per checkpoint: Cov and Corr of losses (positive sign), with _se and 95% intervals _lo.._hi "
            "(corr's on Fisher's z)",
        ),
    ),
)

"""`llc`: the local learning coefficient per checkpoint and chain, from the sample stage's minibatch losses."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .kind import AnalysisKind, Table, View
from .traces import read_batch_losses, read_summary


class LlcAnalysis(Base):
    """Local learning coefficient per checkpoint and chain (SCIENCE.md §3)."""

    KEYED = ()

    kind: Literal["llc"] = Field(description="Local learning coefficient.")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL (default 'llc')."
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import math

    import numpy as np
    import torch

    from ..influence.uncertainty import interval, jackknife
    from ..sampling import llc_per_chain

    summary = read_summary(inputs, stage.inputs[0])
    batch_losses = read_batch_losses(inputs, stage.inputs[0])  # (chains, draws)
    chains = batch_losses.shape[0]
    llc = llc_per_chain(batch_losses, summary["init_loss"], summary["nbeta"]).numpy().astype(float)  # (chains,)
    ((_, se, df),) = jackknife(  # over chains (over batches of draws for one chain): autocorrelation included
        lambda bl: (llc_per_chain(bl, summary["init_loss"], summary["nbeta"]).mean(),), batch_losses
    )
    lo, hi = (float(x) for x in interval(torch.tensor(float(np.mean(llc))), se, df))
    se = float(se)
    return StageOutput(
        tables={
            "r_llc": {
                "chain": np.arange(chains),
                "llc": llc,
                "init_loss": [summary["init_loss"]] * chains,
                "mean_loss": batch_losses.mean(dim=1).numpy(),
            },
            # over chains, here rather than in SQL: DuckDB's parallel aggregation order is not fixed
            "r_llc_summary": {
                "llc_mean": [float(np.mean(llc))],
                "llc_std": [float(np.std(llc, ddof=1)) if chains > 1 else None],
                "chains": [chains],
                **{k: [None if math.isnan(v) else v] for k, v in (("llc_se", se), ("llc_lo", lo), ("llc_hi", hi))},
            },
        }
    )


KIND = AnalysisKind(
    name="llc",
    # 4: standard error and 95% interval of the mean; 3: keyed on its declared fields (no name)
    version=4,
    run="sbif_dsl.stages.llc:run",
    spec=LlcAnalysis,
    attach="sample",
    tables=(
        Table("r_llc", "chain INTEGER, llc DOUBLE, init_loss DOUBLE, mean_loss DOUBLE"),
        Table(
            "r_llc_summary",
            "llc_mean DOUBLE, llc_std DOUBLE, chains INTEGER, llc_se DOUBLE, llc_lo DOUBLE, llc_hi DOUBLE",
        ),
    ),
    views=(
        View(
            "llc",
            """
        SELECT ss.study, sr.step, ss.analysis, l.chain, l.llc, l.init_loss, l.mean_loss
        FROM {scope} JOIN r_llc l ON l.key = sr.key""",
            "LLC estimate per checkpoint and chain",
        ),
        View(
            "llc_summary",
            """
        SELECT ss.study, sr.step, ss.analysis, l.llc_mean, l.llc_std, l.chains, l.llc_se, l.llc_lo, l.llc_hi
        FROM {scope} JOIN r_llc_summary l ON l.key = sr.key
        ORDER BY ss.study, ss.analysis, sr.step""",
            "LLC mean and std over chains per checkpoint; llc_se: standard error of the mean (jackknife over chains), "
            "llc_lo..llc_hi its 95% interval",
        ),
    ),
)

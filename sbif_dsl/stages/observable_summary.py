"""`observable_summary`: every observable's trace summary per checkpoint (its mean and spread over the draws).

What the BIF of an observable is about: how much the observable moves under the local posterior, and around what
value. Reads the sample stage's traces of every observable; the statistics are `sampling.summary`'s, with
delete-one-chain jackknife standard errors and 95% intervals (`influence/uncertainty.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .kind import AnalysisKind, Table, View, estimate_columns
from .traces import estimate_rows, read_traces


class ObservableSummaryAnalysis(Base):
    """Mean and spread over the SGLD draws of every observable, per checkpoint."""

    KEYED = ()

    kind: Literal["observable_summary"] = Field(description="Trace summary of every observable.")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL (default 'observable_summary')."
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import torch

    from ..influence.uncertainty import jackknife
    from ..sampling.summary import trace_summary

    cols: dict[str, list] = {
        "observable": [],
        "n_items": [],
        "n_values": [],
        "chains": [],
        "draws": [],
        "min": [],
        "max": [],
    }
    estimates: dict[str, list] = {"mean": [], "sd": []}
    for name, trace in read_traces(inputs, stage.inputs[0]).items():  # (chains, draws, n[, T])
        (mean, mean_se, df), (sd, sd_se, _) = jackknife(lambda t: trace_summary(t), trace)
        cols["observable"].append(name)
        cols["n_items"].append(trace.shape[2])
        cols["n_values"].append(int(trace[0, 0].numel()))
        cols["chains"].append(trace.shape[0])
        cols["draws"].append(trace.shape[1])
        cols["min"].append(float(trace.min()))
        cols["max"].append(float(trace.max()))
        estimates["mean"].append((mean, mean_se, df))
        estimates["sd"].append((sd, sd_se, df))
    rows = dict(cols)
    for est, parts in estimates.items():
        theta = torch.stack([p[0] for p in parts])
        se = torch.stack([p[1] for p in parts])
        df = min(p[2] for p in parts)
        rows.update(estimate_rows(est, theta, se, df))
    return StageOutput(tables={"r_observable_summary": rows})


KIND = AnalysisKind(
    name="observable_summary",
    version=1,
    run="sbif_dsl.stages.observable_summary:run",
    spec=ObservableSummaryAnalysis,
    attach="sample",
    tables=(
        Table(
            "r_observable_summary",
            "observable VARCHAR, n_items INTEGER, n_values INTEGER, chains INTEGER, draws INTEGER, min DOUBLE, "
            "max DOUBLE, " + estimate_columns("mean", "sd"),
        ),
    ),
    views=(
        View(
            "observable_summary",
            """
        SELECT ss.study, sr.step, ss.analysis, o.observable, t.data_set, o.n_items, o.n_values, o.chains, o.draws,
               o.mean, o.mean_se, o.mean_lo, o.mean_hi, o.sd, o.sd_se, o.sd_lo, o.sd_hi, o.min, o.max
        FROM {scope} JOIN r_observable_summary o ON o.key = sr.key
        JOIN (SELECT DISTINCT key, observable, data_set FROM r_tracked) t
          ON t.key = sr.parent AND t.observable = o.observable""",
            "every observable's trace summary per checkpoint: n_items = samples recorded per draw (1 for a scalar "
            "observable), n_values = numbers per draw (n_items x tokens); mean = mean over chains and draws of the "
            "per-draw mean value, sd = its spread over the pooled draws (how much the observable moves under the "
            "local posterior), each with _se (jackknife over chains) and the 95% interval _lo.._hi; min/max over "
            "every recorded value; data_set NULL for a probe observable (induction_score)",
        ),
    ),
)

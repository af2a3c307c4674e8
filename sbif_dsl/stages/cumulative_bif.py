"""`cumulative_bif`: the BIF integrated along training, over the checkpoints up to t.

Leave-one-out adds up the effect of removing a sample over all of training, while the BIF at a checkpoint is
local to it. The cumulative BIF is the path integral of the local one over optimizer steps, by the trapezoid
rule between checkpoint steps t_0 < ... < t_k (the segment before t_0 counts BIF(t_0)·t_0):

    C_ij(t_k) = BIF_ij(t_0)·t_0 + Σ_{m=1..k} (BIF_ij(t_{m−1}) + BIF_ij(t_m))/2 · (t_m − t_{m−1})

for both bif_cov and bif_corr, with SE² = Σ w_j²·SE_j² (the checkpoints' chains are independent) and t intervals
with the fewest degrees of freedom of its terms (on the raw scale, bif_corr's too: steps × Corr is no correlation;
its terms' SEs are the bif stages' delta-method ones). Sign as the BIF (negative = helpful). Its scale is
steps × BIF, so compare it with LOO by correlation (`agreement` with `bif: <this analysis>`), not by value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageMeta, StageOutput
from .bif import PAIR_COLUMNS, bif_rows, pair_view, read_matrices, write_matrices
from .kind import AnalysisKind, Table, View


class CumulativeBifAnalysis(Base):
    """The BIF of a `bif` analysis integrated over training steps up to each checkpoint (trapezoid rule)."""

    KEYED = ()
    UNKEYED = ("name", "kind", "bif")  # what it integrates: its inputs (the bif stages) and their steps

    kind: Literal["cumulative_bif"] = Field(description="BIF integrated along training up to each checkpoint.")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL (default the kind)."
    )
    bif: str = Field(default="bif", max_length=128, description="Name of the bif analysis to integrate.")


def build(rt, analysis, index: int, plan) -> list[Stage]:
    """One stage per checkpoint t_k, reading the bif stages at t_0..t_k."""
    name = analysis.name or analysis.kind
    bifs = sorted((s for s in plan.stages if s.kind == "bif" and s.analysis == analysis.bif), key=lambda s: s.step)
    return [
        Stage(
            kind="cumulative_bif",
            version=KIND.version,
            params={
                "steps": [s.step for s in bifs[: k + 1]],
                "source": bif.params["source"],
                "target": bif.params["target"] or bif.params["source"],
            },
            inputs=tuple(s.key for s in bifs[: k + 1]),
            meta=StageMeta(step=bif.step, analysis=name, parent=bif.meta.parent, label=f"{name} up to {bif.step}"),
        )
        for k, bif in enumerate(bifs)
    ]


def problems(study, index: int, a) -> list:
    ref = next((b for b in study.analyses if (b.name or b.kind) == a.bif), None)
    if ref is None or ref.kind != "bif":
        declared = [b.name or b.kind for b in study.analyses if b.kind == "bif"]
        return [(("analyses", index, "bif"), f"no bif analysis named {a.bif!r}; bif analyses: {declared or '(none)'}")]
    return []


def trapezoid_weights(steps: list[int]) -> list[float]:
    """w_j with C(t_k) = Σ_j w_j·BIF(t_j): the trapezoid rule over steps t_0..t_k, plus BIF(t_0)·t_0 before t_0."""
    w = [0.0] * len(steps)
    w[0] = float(steps[0])
    for m in range(1, len(steps)):
        half = (steps[m] - steps[m - 1]) / 2
        w[m - 1] += half
        w[m] += half
    return w


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np

    w = trapezoid_weights(stage.params["steps"])
    values = [read_matrices(inputs, key) for key in stage.inputs]  # per checkpoint {column: (θ, SE, df)}
    estimates = {}
    for col in ("bif_cov", "bif_corr"):
        theta = sum(wj * v[col][0] for wj, v in zip(w, values))  # (n, q)
        # checkpoints are sampled by independent chains: their errors add in quadrature
        se = np.sqrt(sum((wj * v[col][1]) ** 2 for wj, v in zip(w, values)))
        estimates[col] = (theta, se, min(v[col][2] for v in values))  # df: the fewest (conservative)
    write_matrices(out_dir / "bif.npz", estimates)
    return StageOutput(
        tables={"r_cumulative_bif": bif_rows(stage.params["source"], stage.params["target"], estimates)},
        artifacts={"bif.npz": out_dir / "bif.npz"},
    )


KIND = AnalysisKind(
    name="cumulative_bif",
    # 3: bif_corr's SE from the bif stages' delta-method SEs (bif version 4); 2: standard errors (from the bif
    # stages', in quadrature) and 95% intervals
    version=3,
    run="sbif_dsl.stages.cumulative_bif:run",
    spec=CumulativeBifAnalysis,
    attach="study",
    build=build,
    problems=problems,
    tables=(Table("r_cumulative_bif", PAIR_COLUMNS),),
    views=(
        View(
            "cumulative_bif",
            pair_view("r_cumulative_bif"),
            "BIF integrated over training steps up to each checkpoint (trapezoid rule; sign as the BIF)",
        ),
    ),
)

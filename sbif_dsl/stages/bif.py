"""`bif`: BIF(i, j) = −Cov(l_i, l_j) and −Corr over a checkpoint's pooled SGLD draws (SCIENCE.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .kind import AnalysisKind, Table, View, estimate_columns
from .traces import estimate_rows, pairs, per_sample, read_traces


class BifAnalysis(Base):
    """BIF = -Cov(l_source, l_target) and -Corr over pooled draws (negative = helpful)."""

    KEYED = ("source", "target", "normalize")

    kind: Literal["bif"] = Field(description="Bayesian influence function.")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL (default 'bif')."
    )
    source: str = Field(default="train", max_length=128, description="Loss observable whose samples exert influence.")
    target: str | None = Field(
        default=None,
        max_length=128,
        description="Observable influenced (default: source), of any kind: per-sample observables give a "
        "source x target matrix, scalar ones (reduce: mean, induction_score) a vector over the sources.",
    )
    normalize: Literal["none", "pearson"] = Field(
        default="pearson", description="Which value fills the `value` column: -Cov (none) or -Corr (pearson)."
    )


def write_matrices(path: Path, estimates: dict) -> None:
    """The (n, q) estimates {name: (θ, SE, df)} as an artifact: what `cumulative_bif` and `agreement` read."""
    import numpy as np

    arrays = {}
    for name, (theta, se, df) in estimates.items():
        arrays.update({name: np.asarray(theta), f"{name}_se": np.asarray(se), f"{name}_df": np.asarray(df)})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def read_matrices(inputs: Inputs, key: str) -> dict:
    """{"bif_cov": (θ, SE, df), "bif_corr": (θ, SE, df)} of a bif (or cumulative_bif) stage input, (n, q) each."""
    import numpy as np

    with np.load(inputs.file(key, "bif.npz")) as z:
        return {n: (z[n], z[f"{n}_se"], int(z[f"{n}_df"])) for n in ("bif_cov", "bif_corr")}


CORR_SCALE = {"bif_corr": "fisher_z"}  # the scale of each estimate's interval (raw unless named)


def bif_rows(source: str, target: str, estimates: dict, scales: dict | None = None) -> dict:
    """Rows of r_bif-shaped tables: one per (source, target) pair, row-major, each estimate with its SE and 95%
    interval (on its scale in `scales`, raw unless named)."""
    i, j = pairs(*next(iter(estimates.values()))[0].shape)
    rows = {
        "source_observable": [source] * i.size,
        "source_idx": i,
        "target_observable": [target] * i.size,
        "target_idx": j,
    }
    for name, (theta, se, df) in estimates.items():
        rows.update(estimate_rows(name, theta, se, df, (scales or {}).get(name, "raw")))
    return rows


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    from ..influence import bif_matrices
    from ..influence.uncertainty import jackknife

    a = stage.params
    traces = read_traces(inputs, stage.inputs[0])
    source = a["source"]
    target = a["target"] or source
    (cov, cov_se, df), (corr, corr_se, _) = jackknife(
        bif_matrices, per_sample(traces[source]), per_sample(traces[target]), scales=("raw", "fisher_z")
    )  # (n, q) each: -Cov, -Corr and their jackknife-over-chains SEs (-Corr's on Fisher's z)
    estimates = {"bif_cov": (cov.numpy(), cov_se.numpy(), df), "bif_corr": (corr.numpy(), corr_se.numpy(), df)}
    write_matrices(out_dir / "bif.npz", estimates)
    rows = bif_rows(source, target, estimates, CORR_SCALE)
    return StageOutput(
        tables={"r_bif": {**rows, "value": rows["bif_corr"] if a["normalize"] == "pearson" else rows["bif_cov"]}},
        artifacts={"bif.npz": out_dir / "bif.npz"},
    )


PAIR_COLUMNS = (
    "source_observable VARCHAR, source_idx INTEGER, target_observable VARCHAR, target_idx INTEGER, "
    + estimate_columns("bif_cov", "bif_corr")
)  # the columns of `bif_rows`
ESTIMATES = ", ".join(f"b.{n}{s}" for n in ("bif_cov", "bif_corr") for s in ("_se", "_lo", "_hi"))


def pair_view(table: str, extra: str = "") -> str:
    """A view of an r_bif-shaped table with the samples' names (through the sample stage's tracked samples)."""
    return f"""
        SELECT ss.study, sr.step, ss.analysis,
               b.source_observable, b.source_idx, src.sample_name AS source,
               b.target_observable, b.target_idx, tgt.sample_name AS target,
               b.bif_cov, b.bif_corr{extra}, {ESTIMATES}
        FROM {{scope}} JOIN {table} b ON b.key = sr.key
        JOIN r_tracked src ON src.key = sr.parent AND src.observable = b.source_observable
                          AND src.sample_idx = b.source_idx
        JOIN r_tracked tgt ON tgt.key = sr.parent AND tgt.observable = b.target_observable
                          AND tgt.sample_idx = b.target_idx"""


KIND = AnalysisKind(
    name="bif",
    # 4: bif_corr's interval on Fisher's z (inside [-1, 1]), its _se the delta-method (1 - r²)·SE_z; 3: standard
    # errors and 95% intervals (jackknife over chains); 2: keyed on its declared fields (no name)
    version=4,
    run="sbif_dsl.stages.bif:run",
    spec=BifAnalysis,
    attach="sample",
    references=("source", "target"),
    any_observable=("target",),  # BIF(z_i, φ) = −Cov(l_i, φ): the sources are losses, the target any observable
    tables=(Table("r_bif", PAIR_COLUMNS + ", value DOUBLE"),),
    views=(
        View(
            "bif",
            pair_view("r_bif", ", b.value"),
            "BIF per checkpoint and sample pair: bif_cov = -Cov, bif_corr = -Corr (negative = helpful), each with "
            "_se (jackknife over chains) and the 95% interval _lo.._hi (bif_corr's on Fisher's z, inside [-1, 1])",
        ),
    ),
)

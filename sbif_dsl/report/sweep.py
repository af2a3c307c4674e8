"""The sweep report: how the chosen BIF pairs, the LLC and BIF-vs-LOO agreement vary across a sweep's cells.

Works on view frames of the cells (each cell is a study; the `sweep` view names its axis values). A pair's sign
flips are found per cell with the standard report's detector (`zero_crossings`, the spec's detect settings) and
called significant with the same 95%-interval rule (`significance.flip_significance`), so "the flip survives in
this cell" means what it means in a study's own report.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import polars as pl

from sbif_dsl.report import charts
from sbif_dsl.report.detect import DetectParams, pairs_frame
from sbif_dsl.report.html import Section
from sbif_dsl.report.signals import zero_crossings
from sbif_dsl.report.significance import flip_significance
from sbif_dsl.report.tables import Html


def cell_labels(sweep: pl.DataFrame) -> pl.DataFrame:
    """(study, cell, label): one row per cell, label = its axis values ("gamma=1e4, eps=1e-5")."""
    return (
        sweep.sort("cell", "position")
        .group_by("study", "cell", maintain_order=True)
        .agg(pl.format("{}={}", "axis", "value").str.join(", ").alias("label"))
        .sort("cell")
    )


def _with_labels(df: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    return df.join(labels, on="study", how="inner")


def cells_table(sweep: pl.DataFrame) -> pl.DataFrame:
    """One row per cell with one column per axis (its value as text)."""
    wide = sweep.sort("cell", "position").pivot(
        on="axis", index=["cell", "study"], values="value", aggregate_function="first"
    )
    return wide.sort("cell")


def flips_table(curves: pl.DataFrame, p: DetectParams) -> pl.DataFrame:
    """Per cell and pair: the sign flips the detector finds (step, direction) and whether each is significant.
    curves: pairs_frame rows with study, label, source, target, step, value[, lo, hi]."""
    by = ["cell", "label", "source", "target"]
    fl = zero_crossings(
        curves, "step", "value", by, min_abs=p.min_abs, min_rel=p.min_rel, noise_k=p.noise_k,
        smooth=p.curve_smooth, min_run=p.min_run,
    )  # fmt: skip
    fl = flip_significance(curves, fl, by, min_run=p.min_run)
    pairs = curves.select(by).unique().sort(by)
    if fl.is_empty():
        return pairs.with_columns(
            pl.lit("none").alias("flips"), pl.lit(0).alias("significant_flips"), pl.lit("").alias("why")
        )
    words = fl.with_columns(
        pl.format(
            "{} at ~{}{}",
            pl.when(pl.col("direction") == "up").then(pl.lit("− → +")).otherwise(pl.lit("+ → −")),
            pl.col("step").round(0).cast(pl.Int64),
            pl.when(pl.col("significant")).then(pl.lit(" (significant)")).otherwise(pl.lit("")),
        ).alias("flip")
    )
    agg = words.group_by(by).agg(
        pl.col("flip").str.join("; ").alias("flips"),
        pl.col("significant").fill_null(False).sum().cast(pl.Int64).alias("significant_flips"),
        pl.col("significance").first().alias("why"),
    )
    out = pairs.join(agg, on=by, how="left").with_columns(
        pl.col("flips").fill_null("none"), pl.col("significant_flips").fill_null(0), pl.col("why").fill_null("")
    )
    return out.sort(by)


def survival_table(flips: pl.DataFrame, n_cells: int) -> pl.DataFrame:
    """Per pair: in how many cells a significant sign flip is found, and which cells have none."""
    return (
        flips.group_by("source", "target")
        .agg(
            (pl.col("significant_flips") > 0).sum().alias("cells_with_significant_flip"),
            pl.col("label").filter(pl.col("significant_flips") == 0).str.join("; ").alias("cells_without"),
        )
        .with_columns(pl.lit(n_cells).alias("cells"))
        .select("source", "target", "cells_with_significant_flip", "cells", "cells_without")
        .sort("source", "target")
    )


def pair_chart(curves: pl.DataFrame, source: str, target: str, value: str) -> alt.LayerChart:
    """One pair's influence over training, one line per cell, its 95% band under it."""
    df = curves.filter((pl.col("source") == source) & (pl.col("target") == target)).sort("cell", "step")
    base = alt.Chart(charts.data(df)).encode(
        x=charts.step_x(df), color=alt.Color("label:N", title="cell", sort=alt.SortField("cell"))
    )
    layers = []
    if "lo" in df.columns:
        layers.append(base.mark_area(opacity=0.15).encode(y="lo:Q", y2="hi:Q"))
    tips = [
        alt.Tooltip("label:N", title="cell"),
        alt.Tooltip("step:Q", format=","),
        alt.Tooltip("value:Q", title=charts.VALUE_LABEL.get(value, value), format=".3f"),
        *([alt.Tooltip("lo:Q", title="95% from", format=".3f"), alt.Tooltip("hi:Q", title="to", format=".3f")]
          if "lo" in df.columns else []),
    ]  # fmt: skip
    line = base.mark_line(point=alt.OverlayMarkDef(size=18, filled=True)).encode(
        y=alt.Y("value:Q", title=charts.VALUE_LABEL.get(value, value)), tooltip=tips
    )
    layers.append(line.add_params(alt.selection_interval(bind="scales", encodings=["x"])))
    rule = alt.Chart(charts.data(pl.DataFrame({"y": [0.0]}))).mark_rule(color="#999").encode(y="y:Q")
    sub = [f"{charts.sign_note(value)}; one line per cell, shaded: its 95% interval (jackknife over chains)"]
    return alt.layer(rule, *layers).properties(
        title=charts._title(f"{source} → {target} across the sweep", sub), width=charts.WIDTH, height=260
    )


def llc_sweep_chart(llc: pl.DataFrame) -> alt.LayerChart:
    df = llc.sort("cell", "step")
    base = alt.Chart(charts.data(df)).encode(
        x=charts.step_x(df), color=alt.Color("label:N", title="cell", sort=alt.SortField("cell"))
    )
    layers = []
    if "llc_lo" in df.columns:
        layers.append(base.mark_area(opacity=0.15).encode(y="llc_lo:Q", y2="llc_hi:Q"))
    tips = [alt.Tooltip("label:N", title="cell"), alt.Tooltip("step:Q", format=","),
            alt.Tooltip("llc_mean:Q", title="LLC", format=".4g")]  # fmt: skip
    layers.append(
        base.mark_line(point=alt.OverlayMarkDef(size=18, filled=True))
        .encode(y=alt.Y("llc_mean:Q", title="local learning coefficient λ̂"), tooltip=tips)
        .add_params(alt.selection_interval(bind="scales", encodings=["x"]))
    )
    sub = ["mean over chains per cell; shaded: its 95% interval; read it at (near-)minima only"]
    return alt.layer(*layers).properties(
        title=charts._title("LLC across the sweep", sub), width=charts.WIDTH, height=260
    )


def sweep_sections(
    sweep: pl.DataFrame,
    *,
    bif: pl.DataFrame | None,
    llc: pl.DataFrame | None,
    agreement: pl.DataFrame | None,
    pairs: Sequence[tuple[str, str]],
    params: DetectParams | None = None,
) -> list[Section]:
    """Sections of the sweep report from the cells' view frames (each filtered to the sweep's cells)."""
    p = params or DetectParams()
    labels = cell_labels(sweep)
    n = labels.height
    out = [
        Section(
            "Sweep cells",
            cells_table(sweep),
            note=(
                f"{n} cells; each is a study named after its axis values (query a cell's results with "
                "`WHERE study = '<study>'`, or join the `sweep` view on study). Cells share every stage whose key "
                "their values leave unchanged."
            ),
        )
    ]
    if bif is not None and not bif.is_empty() and pairs:
        value = p.value
        parts = bif.partition_by("study", as_dict=True)
        curves = _with_labels(
            pl.concat(
                [pairs_frame(g, value, pairs).with_columns(pl.lit(k[0]).alias("study")) for k, g in parts.items()]
            ),
            labels,
        )
        flips = flips_table(curves, p)
        items: list = [Html("<h3>Do the sign flips survive?</h3>"), survival_table(flips, n)]
        items += [pair_chart(curves, s, t, value) for s, t in pairs]
        items += [Html("<h3>Sign flips per cell</h3>"), flips.drop("why")]
        out.append(
            Section(
                "Influence across the sweep",
                items,
                note=(
                    "A flip is found by the report's detector and called significant when, on each side, "
                    f"{p.min_run} consecutive checkpoints have 95% intervals excluding 0 with that side's sign "
                    "(the study report's rule). The intervals measure the spread between chains, not a bias every "
                    "chain shares (step size, localization)."
                ),
            )
        )
    if llc is not None and not llc.is_empty():
        out.append(Section("LLC across the sweep", llc_sweep_chart(_with_labels(llc, labels))))
    if agreement is not None and not agreement.is_empty():
        overall = _with_labels(agreement.filter(pl.col("scope") == "overall"), labels)
        cols = ["cell", "label", "analysis", "bif_analysis", "n_pairs", "pearson", "spearman", "sign_agreement"]
        out.append(
            Section(
                "BIF vs leave-one-out across the sweep",
                overall.select([c for c in cols if c in overall.columns]).sort("analysis", "cell"),
                note="Pooled over all off-diagonal pairs and checkpoints, per cell (the `agreement` view).",
            )
        )
    return out

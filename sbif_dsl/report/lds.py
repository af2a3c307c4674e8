"""The report's LDS part: the linear datamodeling score over training, with its bootstrap band (`lds` view)."""

from __future__ import annotations

import html

import altair as alt
import polars as pl

from sbif_dsl.report.charts import _title, data, step_x
from sbif_dsl.report.tables import Html, table_html

METRICS = {"spearman": "Spearman ρ (the LDS)", "pearson": "Pearson r"}
NOTE = (
    "Linear datamodeling score: retrain from the same initialization and schedule on random subsets S of the "
    "training set and, at every checkpoint, correlate over subsets the BIF's prediction of each target's loss, "
    "(nβ/k)·Σ_{i∈S} BIF_ij − (nβ/n)·Σ_i BIF_ij (negative BIF = helpful, so a helpful sample in S lowers the "
    "prediction), with the loss measured after retraining on S; the mean over targets. 1 = the BIF ranks the "
    "subsets exactly, 0 = no better than chance. Band: 95% bootstrap interval over subsets (it does not include "
    "the SGLD noise of the BIF). No value at a checkpoint where every subset has the same loss (the initialization)."
)


def lds_chart(stats: pl.DataFrame, *, title: str = "LDS over training", width: int = 560) -> alt.LayerChart:
    """Spearman and Pearson per checkpoint (scope 'checkpoint' rows of one `lds` analysis) on the log-step axis."""
    per = stats.filter(pl.col("scope") == "checkpoint")
    parts = []
    for col, label in METRICS.items():
        parts.append(
            per.select(
                "step",
                pl.col(col).alias("value"),
                pl.col(f"{col}_lo").alias("lo"),
                pl.col(f"{col}_hi").alias("hi"),
                pl.lit(label).alias("metric"),
            )
        )
    long = pl.concat(parts).drop_nulls("value").sort("metric", "step")
    base = alt.Chart(data(long))
    color = alt.Color("metric:N", title="per checkpoint", sort=list(METRICS.values()))
    band = base.mark_area(opacity=0.18).encode(x=step_x(long), y="lo:Q", y2="hi:Q", color=color)
    line = base.mark_line(point=alt.OverlayMarkDef(size=24, filled=True)).encode(
        x=step_x(long),
        y=alt.Y("value:Q", title="correlation over subsets", scale=alt.Scale(domain=[-1, 1])),
        color=color,
        tooltip=[
            alt.Tooltip("metric:N"),
            alt.Tooltip("step:Q", format=","),
            alt.Tooltip("value:Q", format="+.3f"),
            alt.Tooltip("lo:Q", title="95% lo", format="+.3f"),
            alt.Tooltip("hi:Q", title="95% hi", format="+.3f"),
        ],
    )
    zero = alt.Chart(data(pl.DataFrame({"zero": [0.0]}))).mark_rule(color="#999", strokeDash=[2, 2]).encode(y="zero:Q")
    first = stats.row(0, named=True) if stats.height else {}
    sub = (
        f"{first.get('bif_analysis') or 'bif'} ({first.get('bif_value') or 'bif_cov'}) against "
        f"{first.get('n_subsets') or '?'} retrained subsets; band: 95% bootstrap interval over subsets"
    )
    return alt.layer(zero, band, line).properties(width=width, height=240, title=_title(title, sub))


def lds_table(stats: pl.DataFrame) -> Html:
    """The overall row (the mean over checkpoints) of one `lds` analysis."""
    df = stats.filter(pl.col("scope") == "overall")
    cols = {
        "n_subsets": "subsets",
        "n_targets": "targets",
        "spearman": "LDS (Spearman)",
        "spearman_lo": "95% lo",
        "spearman_hi": "95% hi",
        "pearson": "Pearson",
        "pearson_lo": "95% lo",
        "pearson_hi": "95% hi",
    }
    return table_html(df, columns={c: h for c, h in cols.items() if c in df.columns})


def lds_items(lds: pl.DataFrame) -> list:
    """Per `lds` analysis: a heading, the chart over training and the mean over checkpoints."""
    items: list = []
    for name in sorted(lds["analysis"].unique().to_list()):
        stats = lds.filter(pl.col("analysis") == name)
        items.append(Html(f"<h3>{html.escape(name)}: linear datamodeling score</h3>"))
        items.append(lds_chart(stats, title=f"{name}: LDS over training"))
        items.append(Html('<p class="note">Mean over checkpoints:</p>'))
        items.append(lds_table(stats))
    return items

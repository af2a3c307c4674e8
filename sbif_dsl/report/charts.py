"""Altair (v6) chart builders for the report. Each takes Polars frames shaped like the SQL views.

Conventions shared by every chart:
- the step axis is logarithmic: Vega-Lite's symlog with constant 1 (= log10(step + 1), the axis the detectors
  use), so step 0 (the initialization) stays on the chart; ticks at 1-2-5 × 10^k;
- influence keeps the papers' sign, stated on every influence chart: BIF = −Cov / −Corr, negative = helpful
  (up-weighting the source lowers the target's loss); diverging colours are centred at 0, blue = helpful;
- tooltips show exact values; line charts zoom/pan along x (drag, wheel; double-click resets);
- detected transitions are drawn as grey bands, influence events as marks on the curves (filled when the 95%
  intervals make them significant, hollow when not);
- where a view carries 95% intervals (`_lo`/`_hi`, jackknife over chains) a shaded band of the curve's colour
  lies under its line; frames without them (older caches) draw the line alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any, Literal

import altair as alt
import numpy as np
import polars as pl

from sbif_dsl.report.detect import pairs_frame
from sbif_dsl.report.tables import Html, table_html

WIDTH, HEIGHT = 760, 300
SIGN_NOTE = "−Cov; negative = helpful"


def sign_note(value: str = "bif_cov") -> str:
    """The sign convention as a chart states it: "BIF = −Cov (normalized: −Corr); negative = helpful"."""
    return "BIF = −Cov (normalized: −Corr); negative = helpful" if value == "bif_corr" else "BIF = " + SIGN_NOTE


VALUE_LABEL = {
    "bif_corr": "BIF (−Corr)",
    "bif_cov": "BIF (−Cov)",
}
VALUE_NOTE = {
    "bif_corr": "normalized BIF = −Corr(l_source, l_target) over SGLD draws, in [−1, 1]",
    "bif_cov": "BIF = −Cov(l_source, l_target) over SGLD draws",
}
EVENT_SHAPES = {"bif_sign_flip": "triangle-up", "bif_peak": "diamond"}
EVENT_LABELS = {"bif_sign_flip": "sign flip", "bif_peak": "|BIF| peak"}


# --------------------------------------------------------------------------------------------- plumbing


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def data(df: pl.DataFrame) -> dict[str, list[dict]]:
    """Inline data for a chart: JSON-safe rows (NaN/inf → null, datetimes → ISO), no row limit.

    A plain {"values": rows} dict: Altair moves it to the spec's top-level `datasets` (deduplicated across
    layers) without validating every row against the schema, which is what makes large frames slow."""
    return {"values": [{k: _jsonable(v) for k, v in r.items()} for r in df.iter_rows(named=True)]}


def step_ticks(max_step: float) -> list[int]:
    """0 and 1-2-5 × 10^k up to max_step (symlog axes otherwise get linear ticks)."""
    ticks, k = [0], 0
    while True:
        for m in (1, 2, 5):
            t = m * 10**k
            if t > max(max_step, 1):
                return ticks
            ticks.append(t)
        k += 1


def step_x(
    df: pl.DataFrame | None = None, field: str = "step", title: str = "training step (log scale)", **kw: Any
) -> alt.X:
    mx = float(df[field].max() or 1) if df is not None and not df.is_empty() else 1e4
    ticks = step_ticks(mx)
    if len(ticks) > 13:  # many decades: keep 1 × 10^k only
        ticks = [t for t in ticks if str(t).lstrip("0")[:1] in ("", "1")]
    return alt.X(
        f"{field}:Q",
        title=title,
        scale=alt.Scale(type="symlog", constant=1, domain=[0, mx], nice=False),
        axis=alt.Axis(values=ticks, format=",d", labelFlush=True, labelOverlap=True),
        **kw,
    )


def _title(text: str, subtitle: str | Sequence[str] | None = None) -> alt.TitleParams:
    sub = [subtitle] if isinstance(subtitle, str) else list(subtitle or [])
    return alt.TitleParams(text=text, subtitle=sub, anchor="start", subtitleColor="#555", subtitleFontSize=12)


def _zoom() -> alt.Parameter:
    return alt.selection_interval(bind="scales", encodings=["x"])


def transition_bands(transitions: pl.DataFrame | None, y_field: str | None = None) -> list[alt.Chart]:
    """Grey bands over the step ranges of detected transitions (frame from `detect_transitions`)."""
    if transitions is None or transitions.is_empty():
        return []
    t = transitions.with_row_index("transition", offset=1).with_columns(
        pl.col("step_start").cast(pl.Float64), pl.col("step_end").cast(pl.Float64)
    )
    band = (
        alt.Chart(data(t))
        .mark_rect(color="#888", opacity=0.14)
        .encode(
            x="step_start:Q",
            x2="step_end:Q",
            tooltip=[
                alt.Tooltip("transition:O", title="transition #"),
                alt.Tooltip("step_start:Q", title="from step", format=","),
                alt.Tooltip("step_end:Q", title="to step", format=","),
                alt.Tooltip("kind:N"),
                alt.Tooltip("what:N"),
            ],
        )
    )
    return [band]


def _layer(layers: list[alt.Chart], title: alt.TitleParams, width: int, height: int) -> alt.LayerChart:
    return alt.layer(*layers).properties(title=title, width=width, height=height)


# -------------------------------------------------------------------------------------- standard charts


def loss_chart(
    training_curve: pl.DataFrame,
    *,
    transitions: pl.DataFrame | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
    log_y: bool = False,
) -> alt.LayerChart:
    """Training loss over steps. training_curve: (step, loss)."""
    df = training_curve.select("step", "loss").sort("step")
    zoom = _zoom()
    line = (
        alt.Chart(data(df))
        .mark_line(color="#1f4e79", strokeWidth=1.8)
        .encode(
            x=step_x(df),
            y=alt.Y("loss:Q", title="training loss", scale=alt.Scale(type="log" if log_y else "linear")),
            tooltip=[alt.Tooltip("step:Q", format=","), alt.Tooltip("loss:Q", format=".5g")],
        )
        .add_params(zoom)
    )
    hover = line.mark_point(size=30, opacity=0, filled=True)  # wide invisible targets for tooltips
    sub = "grey bands: detected transitions (hover for details)" if transitions is not None else None
    return _layer([*transition_bands(transitions), line, hover], _title("Training loss", sub), width, height)


VERDICT_COLORS = {"ok": "#4c9f70", "warn": "#e0a030", "fail": "#c0392b"}


def screens_chart(screens: pl.DataFrame, *, width: int = WIDTH) -> alt.LayerChart:
    """One mark per checkpoint, coloured by its convergence-screen verdict (hover: the reason).
    screens: (step, verdict, reason), one row per checkpoint."""
    df = screens.select("step", "verdict", "reason").unique("step").sort("step")
    marks = (
        alt.Chart(data(df))
        .mark_tick(thickness=5, size=26)
        .encode(
            x=step_x(df),
            color=alt.Color(
                "verdict:N",
                scale=alt.Scale(domain=list(VERDICT_COLORS), range=list(VERDICT_COLORS.values())),
                title="screen",
            ),
            tooltip=[alt.Tooltip("step:Q", format=","), "verdict:N", "reason:N"],
        )
    )
    sub = "per checkpoint: split-R̂, ESS, drift, loss below L(w*) (view diagnostics; hover for the reason)"
    return _layer([marks], _title("Convergence screens", sub), width, 60)


def llc_chart(
    llc_summary: pl.DataFrame,
    *,
    transitions: pl.DataFrame | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> alt.LayerChart:
    """LLC mean over checkpoints with a light ± std band over chains and, where the frame has llc_lo/llc_hi,
    a darker band for the 95% interval of the mean.
    llc_summary: (step, llc_mean, llc_std, chains[, llc_se, llc_lo, llc_hi])."""
    ci = "llc_lo" in llc_summary.columns and "llc_hi" in llc_summary.columns
    want = ("step", "llc_mean", "llc_std", "chains", "llc_se", "llc_lo", "llc_hi")
    cols = [c for c in want if c in llc_summary.columns]
    df = (
        llc_summary.select(cols)
        .sort("step")
        .with_columns(
            lo=pl.col("llc_mean") - pl.col("llc_std").fill_null(0),
            hi=pl.col("llc_mean") + pl.col("llc_std").fill_null(0),
        )
    )
    base = alt.Chart(data(df)).encode(x=step_x(df))
    tips = [
        alt.Tooltip("step:Q", format=","),
        alt.Tooltip("llc_mean:Q", title="LLC mean", format=".4g"),
        alt.Tooltip("llc_std:Q", title="std over chains", format=".3g"),
        *([alt.Tooltip("chains:Q")] if "chains" in cols else []),
        *([alt.Tooltip("llc_se:Q", title="standard error", format=".3g")] if "llc_se" in cols else []),
        *(
            [alt.Tooltip("llc_lo:Q", title="95% interval from", format=".4g"), alt.Tooltip("llc_hi:Q", title="to")]
            if ci
            else []
        ),
    ]
    band = base.mark_area(opacity=0.14 if ci else 0.25, color="#c0504d").encode(
        y=alt.Y("lo:Q", title="local learning coefficient λ̂"), y2="hi:Q"
    )
    bands = [band]
    if ci:
        bands.append(base.mark_area(opacity=0.38, color="#c0504d").encode(y="llc_lo:Q", y2="llc_hi:Q"))
    line = base.mark_line(color="#c0504d", point=alt.OverlayMarkDef(size=28, filled=True, color="#c0504d")).encode(
        y="llc_mean:Q", tooltip=tips
    )
    if ci:
        sub = ["line: mean over chains; dark band: its 95% interval (jackknife over chains); light band: ± std"]
    else:
        sub = ["line: mean over chains; band: mean ± std over chains"]
    if transitions is not None:
        sub.append("grey bands: detected transitions")
    return _layer(
        [*transition_bands(transitions), *bands, line.add_params(_zoom())],
        _title("Local learning coefficient (LLC)", sub),
        width,
        height,
    )


def influence_chart(
    bif: pl.DataFrame,
    *,
    value: str = "bif_corr",
    pairs: Sequence[tuple[str, str]] | None = None,
    events: pl.DataFrame | None = None,
    transitions: pl.DataFrame | None = None,
    title: str = "Influence trajectories",
    failing: Sequence[int] = (),
    width: int = WIDTH,
    height: int = 340,
) -> alt.LayerChart:
    """BIF of selected (source → target) pairs over checkpoints, with sign flips and |BIF| peaks marked, and the
    values at checkpoints whose convergence screens fail (`failing` steps) crossed out.

    bif: the `bif` view (source, target, bif_corr/bif_cov), the `class_bif` view (source_class, ...) or a
    `pairs_frame`. events: `detect_events` output (its bif_sign_flip/bif_peak rows for these pairs are drawn).
    """
    df = bif if ("value" in bif.columns and value not in bif.columns) else pairs_frame(bif, value, pairs)
    if pairs:
        df = df.join(
            pl.DataFrame(list(pairs), schema=["source", "target"], orient="row"),
            on=["source", "target"],
            how="semi",
        )
    df = df.with_columns(pair=pl.col("source") + " → " + pl.col("target")).sort("pair", "step")
    label = VALUE_LABEL.get(value, value)
    has_band = "lo" in df.columns and "hi" in df.columns and df.select(pl.col("lo").is_not_null().any()).item()
    pick = alt.selection_point(fields=["pair"], bind="legend")
    pair_scale = alt.Scale(domain=sorted(df["pair"].unique().to_list()), scheme="tableau10")
    base = alt.Chart(data(df)).encode(x=step_x(df))
    band_tips = (
        [alt.Tooltip("lo:Q", title="95% interval from", format="+.4g"), alt.Tooltip("hi:Q", title="to", format="+.4g")]
        if has_band
        else []
    )
    lines = (
        base.mark_line(strokeWidth=2, point=alt.OverlayMarkDef(size=22, filled=True))
        .encode(
            y=alt.Y("value:Q", title=f"{label}  (negative = helpful)"),
            color=alt.Color(
                "pair:N", title="source → target", legend=alt.Legend(symbolType="stroke"), scale=pair_scale
            ),
            opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
            tooltip=[
                alt.Tooltip("pair:N", title="source → target"),
                alt.Tooltip("step:Q", format=","),
                alt.Tooltip("value:Q", title=label, format="+.4g"),
                *band_tips,
            ],
        )
        .add_params(pick, _zoom())
    )
    zero = alt.Chart(data(pl.DataFrame({"y": [0.0]}))).mark_rule(color="#333", strokeDash=[4, 3]).encode(y="y:Q")
    layers: list[alt.Chart] = [*transition_bands(transitions), zero]
    if has_band:  # under the lines: the 95% interval of each plotted value
        layers.append(
            base.mark_area(interpolate="linear").encode(
                y="lo:Q",
                y2="hi:Q",
                color=alt.Color("pair:N", scale=pair_scale),
                # fillOpacity, not opacity: the shared legend's stroke symbols keep the lines' opacity
                fillOpacity=alt.condition(pick, alt.value(0.2), alt.value(0.04)),
            )
        )
    layers.append(lines)
    flagged = df.filter(pl.col("step").is_in(list(failing)))
    if not flagged.is_empty():  # values from checkpoints that fail the convergence screens
        layers.append(
            alt.Chart(data(flagged))
            .mark_point(shape="cross", size=70, strokeWidth=1.5, color="#333")
            .encode(
                x=step_x(df),
                y="value:Q",
                opacity=alt.condition(pick, alt.value(0.9), alt.value(0.1)),
                tooltip=[
                    alt.Tooltip("pair:N", title="source → target"),
                    alt.Tooltip("step:Q", format=","),
                    alt.Tooltip("value:Q", title=label, format="+.4g"),
                    alt.Tooltip("screen:N", title="convergence screens"),
                ],
            )
            .transform_calculate(screen="'fail: see the Convergence screens section'")
        )
    sig_known = False
    if events is not None and not events.is_empty():
        names = (df["source"] + "→" + df["target"]).unique().to_list()
        ev = events.filter(pl.col("kind").is_in(list(EVENT_SHAPES)) & pl.col("series").is_in(names))
        if not ev.is_empty():
            if "significant" not in ev.columns:
                ev = ev.with_columns(significant=pl.lit(None, dtype=pl.Boolean), significance=pl.lit(None, pl.String))
            ev = ev.with_columns(
                pair=pl.col("series").str.replace("→", " → ", literal=True),
                event=pl.col("kind").replace_strict(EVENT_LABELS, default="event"),
                significance=pl.col("significance").fill_null("unknown (no 95% intervals)"),
            )
            shape = alt.Shape(
                "event:N",
                title="detected event",
                scale=alt.Scale(domain=list(EVENT_LABELS.values()), range=list(EVENT_SHAPES.values())),
            )
            tips = [
                alt.Tooltip("event:N"),
                alt.Tooltip("what:N"),
                alt.Tooltip("evidence:N"),
                alt.Tooltip("significance:N"),
                alt.Tooltip("step:Q", format=",.0f"),
            ]
            sig_known = ev["significant"].is_not_null().any()
            solid = ev.filter(pl.col("significant").is_null() | pl.col("significant"))
            hollow = ev.filter(pl.col("significant").not_())  # not significant: hollow, outlined in its colour
            for part, mark in (
                (solid, {"filled": True, "stroke": "black", "strokeWidth": 0.8}),
                (hollow, {"filled": False, "strokeWidth": 2.2}),
            ):
                if not part.is_empty():
                    layers.append(
                        alt.Chart(data(part))
                        .mark_point(size=140, opacity=1, **mark)
                        .encode(x="step:Q", y="value:Q", color=alt.Color("pair:N"), shape=shape, tooltip=tips)
                    )
    marks = "▲ sign flip (at the zero crossing), ◆ |BIF| peak"
    sub = [
        f"{sign_note(value)}: up-weighting the source lowers the target's loss; positive = harmful",
        f"{VALUE_NOTE.get(value, value)}; click a legend entry to highlight a pair",
    ]
    if sig_known:
        marks += " (filled: significant by the 95% intervals, hollow: not)"
    if has_band:
        marks += "; shaded: the 95% interval at each checkpoint"
    if not flagged.is_empty():
        marks += "; ✚ the checkpoint fails its convergence screens"
    sub.append(marks)
    return _layer(layers, _title(title, sub), width, height).resolve_scale(color="shared")


def _matrix(bif: pl.DataFrame, value: str) -> tuple[pl.DataFrame, list[str], bool]:
    """(step, source, target, value), the label order (by index where the view has one), and whether the
    diagonal is a self-variance (sample × sample: −Var, always −1 in −Corr) rather than information."""
    if "source_class" in bif.columns:
        df = bif.rename({"source_class": "source", "target_class": "target"})
    else:
        df = bif
    missing = [c for c in ("step", "source", "target", value) if c not in df.columns]
    if missing:
        raise ValueError(f"influence frame lacks column(s) {missing}; it has {bif.columns}")
    df = df.with_columns(pl.col("source").cast(pl.String), pl.col("target").cast(pl.String))
    self_var = "source_idx" in df.columns
    if self_var:
        order = (
            pl.concat([df.select(label="source", idx="source_idx"), df.select(label="target", idx="target_idx")])
            .unique("label")
            .sort("idx", "label")["label"]
            .to_list()
        )
    else:
        order = list(dict.fromkeys([*df["source"].to_list(), *df["target"].to_list()]))
    return (
        df.select("step", "source", "target", pl.col(value).cast(pl.Float64).alias("value")),
        order,
        self_var,
    )


def _symmetric_domain(df: pl.DataFrame, skip_diagonal: bool) -> float:
    vals = df.filter(pl.col("source") != pl.col("target")) if skip_diagonal else df
    m = float(vals["value"].drop_nans().abs().max() or 0) if vals.height else 0.0
    if m == 0:
        m = float(df["value"].drop_nans().abs().max() or 1.0)
    return m or 1.0


def _heat_color(value: str, m: float) -> alt.Color:
    return alt.Color(
        "value:Q",
        title=[VALUE_LABEL.get(value, value), "neg = helpful"],
        scale=alt.Scale(scheme="blueorange", domain=[-m, m], domainMid=0, clamp=True),
        legend=alt.Legend(gradientLength=160, format="+.2~g"),
    )


def _heat_tips(value: str) -> list[alt.Tooltip]:
    return [
        alt.Tooltip("step:Q", format=","),
        alt.Tooltip("source:N", title="source (up-weighted)"),
        alt.Tooltip("target:N", title="target (loss measured)"),
        alt.Tooltip("value:Q", title=VALUE_LABEL.get(value, value), format="+.4g"),
    ]


def _heat_subtitle(value: str, self_var: bool, m: float) -> list[str]:
    sub = [f"{sign_note(value)}: blue = helpful, orange = harmful; rows: source (up-weighted), columns: target"]
    note = f"{VALUE_NOTE.get(value, value)}; colour scale ±{m:.3g}"
    if self_var:
        note += " (off-diagonal max; the diagonal is a self-variance and saturates)"
    return [*sub, note]


def pick_steps(all_steps: Sequence[int], k: int = 6) -> list[int]:
    """k checkpoints spread evenly on the log-step axis (the first and last included)."""
    all_steps = sorted(set(all_steps))
    if len(all_steps) <= k:
        return all_steps
    u = np.log10(np.asarray(all_steps, dtype=float) + 1)
    picked = []
    for t in np.linspace(u[0], u[-1], k):
        i = int(np.argmin(np.abs(u - t)))
        if all_steps[i] not in picked:
            picked.append(all_steps[i])
    return sorted(picked)


def heatmap_grid(
    bif: pl.DataFrame,
    steps: Sequence[int] | None = None,
    *,
    value: str = "bif_corr",
    max_panels: int = 6,
    max_items: int = 40,
    title: str = "Influence matrix at selected checkpoints",
    cell: int | None = None,
    row_width: int = 1000,
) -> alt.VConcatChart:
    """Small multiples of the source × target BIF matrix, one panel per checkpoint step.

    bif: the `bif` view (sample × sample, ordered by source_idx) or `class_bif` (class × class).
    steps: checkpoints to show (default: `max_panels` spread on the log-step axis). Colour is diverging,
    centred at 0 and shared by all panels; for sample × sample it is symmetric about the largest
    off-diagonal |value| (the diagonal, a self-variance, is clamped).
    """
    df, order, self_var = _matrix(bif, value)
    all_steps = sorted(df["step"].unique().to_list())
    steps = list(steps) if steps is not None else pick_steps(all_steps, max_panels)
    missing = sorted(set(steps) - set(all_steps))
    if missing:
        raise ValueError(f"heatmap steps {missing} are not checkpoints of this frame (have {all_steps[:8]}…)")
    dropped = max(0, len(order) - max_items)
    order = order[:max_items]
    df = df.filter(pl.col("step").is_in(steps) & pl.col("source").is_in(order) & pl.col("target").is_in(order))
    m = _symmetric_domain(df, self_var)
    n = max(len(order), 1)
    room = row_width - 170  # first panel's labels and the legend
    if cell is None:  # shrink cells (not below 16 px) to keep up to 6 panels in one row
        cell = max(6, min(40, 200 // n))
        fit = (room // max(len(steps), 1) - 12) // n
        if len(steps) <= 6 and fit >= 16:
            cell = min(cell, fit)
    columns = max(1, min(len(steps), room // (cell * n + 12)))
    panels = []
    for k, st in enumerate(steps):
        lead = k % columns == 0
        panels.append(
            alt.Chart()
            .transform_filter(alt.datum.step == st)
            .mark_rect()
            .encode(
                x=alt.X("target:N", sort=order, title="target", axis=alt.Axis(labelAngle=-50)),
                y=alt.Y(
                    "source:N",
                    sort=order,
                    title="source" if lead else None,
                    axis=alt.Axis(labels=lead, ticks=lead),
                ),
                color=_heat_color(value, m),
                tooltip=_heat_tips(value),
            )
            .properties(width=cell * n, height=cell * n, title=alt.TitleParams(f"step {st:,}", fontSize=12))
        )
    rows = [alt.hconcat(*panels[i : i + columns], spacing=10) for i in range(0, len(panels), columns)]
    sub = _heat_subtitle(value, self_var, m)
    if dropped:
        sub.append(f"first {max_items} of {max_items + dropped} items shown")
    return alt.vconcat(*rows, data=data(df), spacing=14).properties(title=_title(title, sub))


def heatmap_slider(
    bif: pl.DataFrame,
    *,
    value: str = "bif_corr",
    max_items: int = 40,
    title: str = "Influence matrix: pick a checkpoint",
    cell: int | None = None,
) -> alt.VConcatChart:
    """One source × target BIF matrix with a slider over all checkpoints (same colours as `heatmap_grid`)."""
    df, order, self_var = _matrix(bif, value)
    order = order[:max_items]
    df = df.filter(pl.col("source").is_in(order) & pl.col("target").is_in(order))
    steps = sorted(df["step"].unique().to_list())
    idx = pl.DataFrame({"step": steps, "ckpt": list(range(len(steps)))}, schema_overrides={"step": df.schema["step"]})
    df = df.join(idx, on="step")
    m = _symmetric_domain(df, self_var)
    n = max(len(order), 1)
    cell = cell or max(8, min(36, 400 // n))
    ck = alt.param(
        name="ckpt",
        value=len(steps) - 1,
        bind=alt.binding_range(min=0, max=len(steps) - 1, step=1, name="checkpoint index (0 = first) "),
    )
    label = (
        alt.Chart()
        .transform_filter("datum.ckpt == ckpt")
        .transform_aggregate(step="max(step)")
        .transform_calculate(text="'checkpoint step ' + format(datum.step, ',')")
        .mark_text(align="left", baseline="middle", fontSize=14, fontWeight="bold")
        .encode(x=alt.value(0), y=alt.value(9), text="text:N")
        .properties(width=cell * n, height=18, view=alt.ViewBackground(stroke=None))
    )
    heat = (
        alt.Chart()
        .transform_filter("datum.ckpt == ckpt")
        .mark_rect()
        .encode(
            x=alt.X("target:N", sort=order, title="target (loss measured)", axis=alt.Axis(labelAngle=-50)),
            y=alt.Y("source:N", sort=order, title="source (up-weighted)"),
            color=_heat_color(value, m),
            tooltip=_heat_tips(value),
        )
        .properties(width=cell * n, height=cell * n)
    )
    sub = [
        *_heat_subtitle(value, self_var, m),
        "drag the slider under the chart to step through all checkpoints",
    ]
    return alt.vconcat(label, heat, data=data(df), spacing=4).add_params(ck).properties(title=_title(title, sub))


def induction_chart(
    induction_score: pl.DataFrame,
    *,
    transitions: pl.DataFrame | None = None,
    width: int = WIDTH,
    height: int = 260,
) -> alt.LayerChart:
    """Induction score (max over heads) over checkpoints. induction_score: (step, score)."""
    df = induction_score.select("step", "score").sort("step")
    line = (
        alt.Chart(data(df))
        .mark_line(color="#6a3d9a", point=alt.OverlayMarkDef(size=26, filled=True))
        .encode(
            x=step_x(df),
            y=alt.Y("score:Q", title="induction score"),
            tooltip=[alt.Tooltip("step:Q", format=","), alt.Tooltip("score:Q", format=".4g")],
        )
        .add_params(_zoom())
    )
    sub = "prefix-matching attention on a repeated random block, max over heads"
    return _layer([*transition_bands(transitions), line], _title("Induction score", sub), width, height)


def class_loss_chart(
    class_loss: pl.DataFrame,
    *,
    transitions: pl.DataFrame | None = None,
    width: int = WIDTH,
    height: int = 300,
) -> alt.LayerChart:
    """Mean next-token loss per token class over checkpoints. class_loss: (step, class, loss)."""
    df = class_loss.select("step", pl.col("class").cast(pl.String), "loss").sort("class", "step")
    pick = alt.selection_point(fields=["class"], bind="legend")
    line = (
        alt.Chart(data(df))
        .mark_line(point=alt.OverlayMarkDef(size=20, filled=True))
        .encode(
            x=step_x(df),
            y=alt.Y("loss:Q", title="mean token loss (nats)"),
            color=alt.Color("class:N", title="token class"),
            opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
            tooltip=[
                alt.Tooltip("class:N"),
                alt.Tooltip("step:Q", format=","),
                alt.Tooltip("loss:Q", format=".4g"),
            ],
        )
        .add_params(pick, _zoom())
    )
    sub = "click a legend entry to highlight a class"
    return _layer([*transition_bands(transitions), line], _title("Loss per token class", sub), width, height)


# ------------------------------------------------------------------------------------------ user charts


def section_chart(
    df: pl.DataFrame,
    chart: Literal["line", "heatmap", "bar", "table"],
    encodings: Mapping[str, Any],
    title: str = "",
    *,
    subtitle: str | Sequence[str] | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> alt.TopLevelMixin | Html:
    """A user section: any frame as a line, heatmap, bar chart or table.

    encodings: Altair shorthands per channel, e.g. {"x": "step", "y": "loss", "color": "class"}; a bare
    column name gets its type from the frame (number → :Q, else :N). An `x` of "step" gets the log-step axis;
    a numeric heatmap colour gets a diverging scale centred at 0. For "table", `encodings` may hold
    {"columns": [...]} to pick and order columns. Tooltips default to every encoded field.
    """
    if chart == "table":
        cols = list(encodings.get("columns") or df.columns)
        return table_html(df, columns={c: c for c in cols})
    if chart not in ("line", "heatmap", "bar"):
        raise ValueError(f"section chart must be line, heatmap, bar or table; got {chart!r}")
    missing = [
        str(v).split(":")[0]
        for v in encodings.values()
        if isinstance(v, str) and str(v).split(":")[0] not in df.columns
    ]
    if missing:
        raise ValueError(f"section {title!r}: column(s) {missing} not in the frame (have {df.columns})")

    def typed(v: str) -> str:
        if ":" in v:
            return v
        return f"{v}:{'Q' if df.schema[v].is_numeric() else 'N'}"

    enc: dict[str, Any] = {}
    for ch, v in encodings.items():
        if ch == "tooltip" or not isinstance(v, str):
            enc[ch] = v
            continue
        sv = typed(v)
        if ch == "x" and sv.split(":")[0] == "step" and sv.endswith(":Q") and chart == "line":
            enc[ch] = step_x(df)
        elif ch == "color" and chart == "heatmap" and sv.endswith(":Q"):
            col = sv.split(":")[0]
            m = float(df[col].drop_nans().abs().max() or 1.0) or 1.0
            enc[ch] = alt.Color(sv, scale=alt.Scale(scheme="blueorange", domain=[-m, m], domainMid=0, clamp=True))
        else:
            enc[ch] = sv
    if "tooltip" not in enc:
        enc["tooltip"] = [typed(v) for v in encodings.values() if isinstance(v, str)]
    fields = {str(v).split(":")[0] for v in encodings.values() if isinstance(v, str)}
    if subtitle is None and fields & {"bif_corr", "bif_cov", "bif"}:
        subtitle = sign_note("bif_corr" if "bif_corr" in fields else "bif_cov")
    size: dict[str, Any] = {"width": width, "height": height}
    for ch in ("x", "y"):
        v = encodings.get(ch)
        if isinstance(v, str) and typed(v).endswith((":N", ":O")):
            if chart == "heatmap":
                size["width" if ch == "x" else "height"] = alt.Step(28)
            if ch == "x" and isinstance(enc[ch], str):
                enc[ch] = alt.X(enc[ch], axis=alt.Axis(labelAngle=-40))
    base = alt.Chart(data(df))
    mark = {
        "line": base.mark_line(point=alt.OverlayMarkDef(size=20, filled=True)),
        "heatmap": base.mark_rect(),
        "bar": base.mark_bar(),
    }[chart]
    out = mark.encode(**enc).properties(**size, title=_title(title or chart, subtitle))
    if chart == "line":
        out = out.add_params(_zoom())
    return out


# ------------------------------------------------------------------------------------ validation (LOO)

AGREEMENT_METRICS = {
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "sign_agreement": "sign agreement",
    "sign_agreement_weighted": "sign agreement (|LOO|-weighted)",
}


def _stat(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{100 * v:.0f}%" if pct else f"{v:+.2f}"


def agreement_chart(
    pairs: pl.DataFrame,
    stats: pl.DataFrame | None = None,
    *,
    title: str = "BIF vs leave-one-out",
    width: int = 520,
    height: int = 340,
) -> alt.VConcatChart:
    """The BIF against the leave-one-out ground truth for one `agreement` analysis.

    Top: a scatter of every compared (source, target) pair at one checkpoint (x: LOO delta, y: the BIF value
    the analysis compared), with a slider over all checkpoints; points are coloured by whether the two agree in
    sign. Bottom: the per-checkpoint agreement (Pearson, Spearman, sign agreement) over training on the
    log-step axis, a rule at the checkpoint the slider picks.
    pairs: `agreement_pairs` rows of one analysis (step, source, target, bif, loo[, bif_value, bif_analysis]);
    stats: its `agreement` rows (the scope 'checkpoint' ones are drawn; optional).
    """
    missing = [c for c in ("step", "source", "target", "bif", "loo") if c not in pairs.columns]
    if missing:
        raise ValueError(f"agreement pairs lack column(s) {missing}; they have {pairs.columns}")
    first = pairs.row(0, named=True) if pairs.height else {}
    bif_value = first.get("bif_value") or "bif_cov"
    bif_name = first.get("bif_analysis") or "bif"
    sgn = pl.col("bif").sign() * pl.col("loo").sign()
    p = (
        pairs.select("step", pl.col("source").cast(pl.String), pl.col("target").cast(pl.String), "bif", "loo")
        .with_columns(
            pair=pl.col("source") + " → " + pl.col("target"),
            agree=pl.when(sgn > 0)
            .then(pl.lit("same sign"))
            .when(sgn < 0)
            .then(pl.lit("opposite sign"))
            .otherwise(pl.lit("a zero")),
        )
        .sort("step", "source", "target")
    )
    steps = sorted(p["step"].unique().to_list())
    idx = pl.DataFrame({"step": steps, "ckpt": list(range(len(steps)))}, schema_overrides={"step": p.schema["step"]})
    p = p.join(idx, on="step")
    per = (
        stats.filter(pl.col("scope") == "checkpoint")
        if stats is not None and not stats.is_empty() and "scope" in stats.columns
        else None
    )
    labels = idx
    if per is not None:
        keep = [c for c in ("step", "n_pairs", *AGREEMENT_METRICS) if c in per.columns]
        labels = idx.join(per.select(keep).with_columns(pl.col("step").cast(idx.schema["step"])), on="step", how="left")
    text = []
    for r in labels.iter_rows(named=True):
        t = f"checkpoint step {r['step']:,}"
        if "pearson" in r:
            t += f"  ·  Pearson {_stat(r.get('pearson'))}  ·  Spearman {_stat(r.get('spearman'))}"
            t += f"  ·  sign agreement {_stat(r.get('sign_agreement'), pct=True)}"
        if r.get("n_pairs") is not None:
            t += f"  ({r['n_pairs']:,} pairs)"
        text.append(t)
    labels = labels.with_columns(pl.Series("text", text))
    ck = alt.param(
        name="ckpt",
        value=len(steps) - 1,
        bind=alt.binding_range(min=0, max=max(len(steps) - 1, 0), step=1, name="checkpoint index (0 = first) "),
    )
    at_ck = "datum.ckpt == ckpt"
    label = (
        alt.Chart(data(labels))
        .transform_filter(at_ck)
        .mark_text(align="left", baseline="middle", fontSize=13, fontWeight="bold")
        .encode(x=alt.value(0), y=alt.value(9), text="text:N")
        .properties(width=width, height=18, view=alt.ViewBackground(stroke=None))
    )
    ylab = f"BIF of {bif_name} ({VALUE_LABEL.get(bif_value, bif_value)})"
    points = (
        alt.Chart(data(p))
        .transform_filter(at_ck)
        .mark_circle(size=55, opacity=0.8)
        .encode(
            x=alt.X(
                "loo:Q",
                title="LOO Δ = l_target(full) − l_target(without source)",
                scale=alt.Scale(zero=True),
                axis=alt.Axis(format=".3~g", labelOverlap=True),
            ),
            # a fixed label extent: the labels' width changes with the checkpoint, the layout must not
            y=alt.Y(
                "bif:Q",
                title=ylab,
                scale=alt.Scale(zero=True),
                axis=alt.Axis(format=".3~g", minExtent=64, maxExtent=64),
            ),
            color=alt.Color(
                "agree:N",
                title="BIF vs LOO",
                scale=alt.Scale(domain=["same sign", "opposite sign", "a zero"], range=["#2b83ba", "#d7191c", "#999"]),
            ),
            tooltip=[
                alt.Tooltip("pair:N", title="source → target"),
                alt.Tooltip("step:Q", format=","),
                alt.Tooltip("bif:Q", title=ylab, format="+.4g"),
                alt.Tooltip("loo:Q", title="LOO Δ", format="+.4g"),
                alt.Tooltip("agree:N", title="signs"),
            ],
        )
    )
    zero = data(pl.DataFrame({"zero": [0.0]}))
    axes = [
        alt.Chart(zero).mark_rule(color="#555", strokeDash=[4, 3]).encode(x="zero:Q"),
        alt.Chart(zero).mark_rule(color="#555", strokeDash=[4, 3]).encode(y="zero:Q"),
    ]
    scatter = alt.layer(*axes, points).properties(width=width, height=height)
    rows: list[Any] = [label, scatter]
    if per is not None:
        mets = [c for c in AGREEMENT_METRICS if c in per.columns]
        long = (
            per.select("step", *mets)
            .unpivot(index="step", on=mets, variable_name="metric", value_name="value")
            .drop_nulls("value")
            .filter(pl.col("value").is_finite())
            .with_columns(metric=pl.col("metric").replace_strict(AGREEMENT_METRICS))
            .sort("metric", "step")
        )
        if not long.is_empty():
            names = [AGREEMENT_METRICS[m] for m in mets]
            curve = (
                alt.Chart(data(long))
                .mark_line(point=alt.OverlayMarkDef(size=20, filled=True))
                .encode(
                    x=step_x(long),
                    y=alt.Y("value:Q", title="agreement", scale=alt.Scale(domain=[-1, 1])),
                    color=alt.Color("metric:N", title="per checkpoint", sort=names),
                    strokeDash=alt.condition(
                        alt.datum.metric == AGREEMENT_METRICS["sign_agreement_weighted"],
                        alt.value([4, 2]),
                        alt.value([1, 0]),
                    ),
                    tooltip=[
                        alt.Tooltip("metric:N"),
                        alt.Tooltip("step:Q", format=","),
                        alt.Tooltip("value:Q", format="+.3f"),
                    ],
                )
            )
            picked = (
                alt.Chart(data(labels))
                .transform_filter(at_ck)
                .mark_rule(color="#333", strokeWidth=1.5)
                .encode(x="step:Q", tooltip=[alt.Tooltip("text:N", title="slider")])
            )
            zline = alt.Chart(zero).mark_rule(color="#999", strokeDash=[2, 2]).encode(y="zero:Q")
            rows.append(
                alt.layer(zline, curve, picked).properties(
                    width=width,
                    height=220,
                    title=alt.TitleParams(
                        "Agreement per checkpoint (black rule: the slider's checkpoint)", fontSize=12, anchor="start"
                    ),
                )
            )
    sub = [
        "x: leave-one-out ground truth (retrain without the source), y: the BIF; both negative = helpful",
        "blue: same sign, red: opposite sign; drag the slider under the chart to step through the checkpoints",
    ]
    return (
        alt.vconcat(*rows, spacing=6)
        .add_params(ck)
        .resolve_scale(color="independent")
        .properties(title=_title(title, sub))
    )

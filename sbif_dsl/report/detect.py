"""Stage and transition detection on Polars frames (SCIENCE.md §7).

The detectors live in `signals.py` and are re-exported here; each works per group of a long frame
(`by` columns, e.g. one BIF pair):

- `zero_crossings`: sign changes with hysteresis (a dead band `±band` that wiggles inside never leave);
- `peaks`: local maxima with their topographic prominence (the same definition as scipy.signal);
- `changepoints` / `loss_drops`: steepest parts of a curve on a log-step axis (slope peaks of the smoothed
  curve), i.e. the transitions between plateaus of the LLC or of the training loss.

`detect_events` runs them on the study's frames and `detect_transitions` merges the events into one table of
phase transitions. Where the influence frame carries 95% intervals (the views' `<value>_lo`/`_hi`), each sign
flip and |BIF| peak is also called significant or not (`significance.py`; detection itself ignores them).
Influence values keep the papers' sign: BIF = −Cov (or −Corr), negative = helpful.
Every threshold lives in `DetectParams`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import polars as pl

from sbif_dsl.report.signals import (
    changepoints,
    log_step,
    moving_average,
    noise_sigma,
    peak_prominences,
    peaks,
    zero_crossings,
)
from sbif_dsl.report.significance import flip_significance, peak_significance

__all__ = [
    "EVENT_COLUMNS",
    "TRANSITION_COLUMNS",
    "DetectParams",
    "changepoints",
    "detect_events",
    "detect_transitions",
    "log_step",
    "loss_drops",
    "moving_average",
    "noise_sigma",
    "pairs_frame",
    "peak_prominences",
    "peaks",
    "zero_crossings",
]

EVENT_COLUMNS = [
    "step_start",
    "step_end",
    "step",
    "value",
    "kind",
    "series",
    "what",
    "evidence",
    "significant",
    "significance",
]
TRANSITION_COLUMNS = ["step_start", "step_end", "kind", "what", "evidence", "significance"]
KIND_LABELS = {
    "loss_drop": "loss drop",
    "llc_change": "LLC change",
    "curve_change": "curve change",
    "bif_sign_flip": "BIF sign flip",
    "bif_peak": "BIF peak",
}
_PRIMARY = ("loss_drop", "llc_change", "curve_change")


@dataclass(frozen=True)
class DetectParams:
    """Every knob of the detectors (the spec's report section maps onto these fields)."""

    min_abs: float = 0.0
    """Zero crossings: the curve must leave the band ±max(min_abs, min_rel·max|y|, noise_k·σ) on both
    sides."""
    min_rel: float = 0.05
    """Zero crossings: band half-width as a fraction of the curve's max |value|."""
    min_run: int = 2
    """Zero crossings: each side must hold for this many samples beyond the band (1 = no persistence)."""
    prominence: float = 0.2
    """Peaks: minimum topographic prominence as a fraction of the curve's range (max − min)."""
    peak_use_abs: bool = True
    """Peaks: look for peaks of |value| (helpful and harmful extremes alike)."""
    noise_k: float = 3.0
    """Noise floor in robust noise σ (trimmed RMS of second differences): the zero-crossing band and a
    changepoint's change need ≥ noise_k·σ, a peak's prominence ≥ 2·noise_k·σ. 0 = off."""
    curve_smooth: int = 1
    """Moving-average window (points) applied to influence curves before crossings/peaks; 1 = off."""
    smooth_window: int = 5
    """Changepoints / loss drops: moving-average window in points of the log-step grid."""
    grid_points: int = 200
    """Changepoints / loss drops: curves are bin-averaged onto this many points uniform in log10(step + 1)."""
    slope_prominence: float = 0.2
    """Changepoints: a slope peak needs this prominence, as a fraction of the largest |slope|."""
    min_change: float = 0.05
    """Changepoints: the curve must change by this fraction of its range between the adjacent plateaus."""
    merge_decades: float = 0.1
    """Events closer than this (in decades of step) belong to one transition."""
    value: str = "bif_corr"
    """Influence column the BIF detectors read (`bif_corr` or `bif_cov`)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float | int) and not isinstance(v, bool) and (not math.isfinite(v) or v < 0):
                raise ValueError(f"DetectParams.{f.name} must be a finite number >= 0, got {v!r}")
        if self.curve_smooth < 1 or self.smooth_window < 1 or self.min_run < 1:
            raise ValueError("DetectParams smoothing windows and min_run must be >= 1 point")
        if self.grid_points < 8:
            raise ValueError("DetectParams.grid_points must be >= 8")
        if not 0 <= self.prominence <= 1 or not 0 <= self.slope_prominence <= 1:
            raise ValueError("DetectParams prominences are fractions in [0, 1]")


def _changepoints(df: pl.DataFrame, x: str, y: str, by: Sequence[str] | None, p: DetectParams) -> pl.DataFrame:
    """`changepoints` with the thresholds of `p` (loss drops, LLC and curve changes alike)."""
    return changepoints(
        df,
        x,
        y,
        by,
        smooth_window=p.smooth_window,
        grid_points=p.grid_points,
        prominence=p.slope_prominence,
        min_change=p.min_change,
        noise_k=p.noise_k,
    )


def loss_drops(
    training_curve: pl.DataFrame,
    x: str = "step",
    y: str = "loss",
    by: Sequence[str] | None = None,
    params: DetectParams | None = None,
) -> pl.DataFrame:
    """Sharp drops of the training loss on a log-step axis (changepoints with direction "drop").
    Returns the `changepoints` columns plus drop_frac = (before − after) / before."""
    cp = _changepoints(training_curve, x, y, by, params or DetectParams()).filter(pl.col("direction") == "drop")
    frac = (pl.col("value_before") - pl.col("value_after")) / pl.col("value_before").abs()
    return cp.with_columns(drop_frac=pl.when(pl.col("value_before") != 0).then(frac).otherwise(None))


# ------------------------------------------------------------------------------------ events/transitions


def pairs_frame(bif: pl.DataFrame, value: str = "bif_corr", pairs: Sequence[tuple] | None = None) -> pl.DataFrame:
    """Normalize the `bif` or `class_bif` view to (step, [analysis], source, target, value, [lo, hi]).

    lo, hi: the 95% interval of `value` (the view's `<value>_lo`, `<value>_hi`), only where the frame has
    both (older caches do not). `pairs`: optional list of (source, target) labels to keep (e.g.
    [("dog", "cat")])."""
    if "source_class" in bif.columns:
        bif = bif.rename({"source_class": "source", "target_class": "target"})
    need = ["step", "source", "target", value]
    missing = [c for c in need if c not in bif.columns]
    if missing:
        raise ValueError(f"influence frame lacks column(s) {missing}; it has {bif.columns}")
    cols = ["step", *(["analysis"] if "analysis" in bif.columns else []), "source", "target"]
    band = [f"{value}_lo", f"{value}_hi"]
    extra = (
        [pl.col(band[0]).cast(pl.Float64).alias("lo"), pl.col(band[1]).cast(pl.Float64).alias("hi")]
        if all(c in bif.columns for c in band)
        else []
    )
    out = bif.select([*[pl.col(c) for c in cols], pl.col(value).cast(pl.Float64).alias("value"), *extra])
    out = out.with_columns(pl.col("source").cast(pl.String), pl.col("target").cast(pl.String))
    if pairs:
        keep = pl.DataFrame([(str(s), str(t)) for s, t in pairs], schema=["source", "target"], orient="row")
        out = out.join(keep, on=["source", "target"], how="semi")
    return out.sort([*cols[1:], "step"])


def _one_study(df: pl.DataFrame | None, name: str) -> pl.DataFrame | None:
    if df is None or df.is_empty():
        return None
    if "study" in df.columns and df["study"].n_unique() > 1:
        raise ValueError(f"{name}: detection runs on one study at a time; got {df['study'].unique().to_list()}")
    return df


def _event(
    kind: str, series: str, span: tuple[float, float], step: float, value: float | None, what: str, evidence: str
) -> dict:
    """One event (the EVENT_COLUMNS) as a dict; span is (step_start, step_end). Significance: unknown."""
    return {
        "step_start": span[0],
        "step_end": span[1],
        "step": step,
        "value": value,
        "kind": kind,
        "series": series,
        "what": what,
        "evidence": evidence,
        "significant": None,
        "significance": None,
    }


def _curve_event(r: dict, kind: str, series: str, what: str, evidence: str) -> dict:
    """An event from a `changepoints` row: its window, its steepest step, no value."""
    return _event(kind, series, (r["step_start"], r["step_end"]), r["step"], None, what, evidence)


def _pair_event(r: dict, kind: str, label: str, span: tuple, value: float, detail: str, mag: float) -> dict:
    """An event of one (source, target) influence curve, grouped by `label` and ranked by `mag` in summaries."""
    name = f"{r['source']}→{r['target']}"
    return {
        **_event(kind, name, span, r["step"], value, f"{name} {label}", f"{name}: {detail}"),
        "significant": r.get("significant"),
        "significance": r.get("significance"),
        "_group": label,
        "_mag": mag,
    }


def _plateau_changes(frame: pl.DataFrame, column: str, kind: str, series: str, p: DetectParams) -> list[dict]:
    """Events for the changes of `column` between plateaus (LLC, induction score, any user curve)."""
    return [
        _curve_event(
            r,
            kind,
            series,
            f"{series} {'rises' if r['direction'] == 'rise' else 'falls'} "
            f"{r['value_before']:.3g} → {r['value_after']:.3g}",
            f"{series} {r['change']:+.3g} between plateaus, steepest at step {r['step']:,.0f} "
            f"({r['slope']:+.3g} per decade)",
        )
        for r in _changepoints(frame, "step", column, None, p).iter_rows(named=True)
    ]


def _events(
    training_curve: pl.DataFrame | None,
    llc_summary: pl.DataFrame | None,
    bif_pairs: pl.DataFrame | None,
    p: DetectParams,
    curves: Mapping[str, pl.DataFrame] | None = None,
) -> list[dict]:
    """Events as dicts; keys starting with "_" are internal (grouping label, magnitude for ranking)."""
    ev: list[dict] = []
    tc = _one_study(training_curve, "training_curve")
    if tc is not None:
        for r in loss_drops(tc, params=p).iter_rows(named=True):
            ev.append(
                _curve_event(
                    r,
                    "loss_drop",
                    "training loss",
                    f"training loss drops {r['value_before']:.3g} → {r['value_after']:.3g}",
                    f"loss −{100 * (r['drop_frac'] or 0):.0f}% between plateaus, steepest at step "
                    f"{r['step']:,.0f} ({r['slope']:.3g} per decade)",
                )
            )
    llc = _one_study(llc_summary, "llc_summary")
    if llc is not None:
        ev += _plateau_changes(llc, "llc_mean", "llc_change", "LLC", p)
    for name, frame in (curves or {}).items():
        cf = _one_study(frame, name)
        if cf is not None:
            ev += _plateau_changes(cf, "value", "curve_change", name, p)
    bp = _one_study(bif_pairs, "bif_pairs")
    if bp is not None:
        if "value" not in bp.columns or p.value in bp.columns:
            bp = pairs_frame(bp, p.value)
        by = [c for c in ("analysis", "source", "target") if c in bp.columns]
        col = p.value
        zc = zero_crossings(
            bp,
            "step",
            "value",
            by,
            min_abs=p.min_abs,
            min_rel=p.min_rel,
            noise_k=p.noise_k,
            smooth=p.curve_smooth,
            min_run=p.min_run,
        )
        zc = flip_significance(bp, zc, by, min_run=p.min_run)
        for r in zc.iter_rows(named=True):
            label = "turns harmful (− → +)" if r["direction"] == "up" else "turns helpful (+ → −)"
            detail = (
                f"{col} {r['value_before']:+.3g} at step {r['step_before']:,.0f} → "
                f"{r['value_after']:+.3g} at step {r['step_after']:,.0f}"
            )
            span = (r["step_before"], r["step_after"])
            ev.append(
                _pair_event(r, "bif_sign_flip", label, span, 0.0, detail, abs(r["value_after"] - r["value_before"]))
            )
        pk = peaks(
            bp,
            "step",
            "value",
            by,
            prominence=p.prominence,
            use_abs=p.peak_use_abs,
            noise_k=p.noise_k,
            smooth=p.curve_smooth,
        )
        pk = peak_significance(bp, pk, by, use_abs=p.peak_use_abs)
        for r in pk.iter_rows(named=True):
            label = f"{'harmful' if r['value'] > 0 else 'helpful'} |BIF| peak"
            detail = (
                f"{col} {r['value']:+.3g} at step {r['step']:,.0f}, prominence "
                f"{r['prominence']:.3g} ({100 * r['prominence_rel']:.0f}% of its range)"
            )
            span = (r["step_left"], r["step_right"])
            ev.append(_pair_event(r, "bif_peak", label, span, r["value"], detail, abs(r["value"])))
    return sorted(ev, key=lambda e: e["step"])


_EVENT_SCHEMA = {
    "step_start": pl.Float64,
    "step_end": pl.Float64,
    "step": pl.Float64,
    "value": pl.Float64,
    "kind": pl.String,
    "series": pl.String,
    "what": pl.String,
    "evidence": pl.String,
    "significant": pl.Boolean,
    "significance": pl.String,
}


def detect_events(
    training_curve: pl.DataFrame | None,
    llc_summary: pl.DataFrame | None,
    bif_pairs: pl.DataFrame | None,
    params: DetectParams | None = None,
    *,
    curves: Mapping[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """Every individual event of one study, one row each.

    training_curve: (step, loss); llc_summary: (step, llc_mean, ...); bif_pairs: the `bif`/`class_bif` view
    or `pairs_frame` output (step, source, target, value or params.value); curves: more named (step, value)
    curves whose changepoints count like LLC changes (e.g. {"induction score": ...}). Any may be None/empty.
    Returns: step_start, step_end, step, value (0 at a sign flip, the signed BIF at a peak, else null),
    kind (loss_drop | llc_change | curve_change | bif_sign_flip | bif_peak), series ("training loss", "LLC",
    a curve's name or "source→target"), what, evidence, significant (sign flips and peaks: whether the 95%
    intervals resolve them, null when the frame has none or for other events; rule in `significance.py`),
    significance (why, in words). Influence signs follow the papers: −Cov/−Corr, negative = helpful.
    """
    ev = _events(training_curve, llc_summary, bif_pairs, params or DetectParams(), curves)
    rows = [{k: e[k] for k in EVENT_COLUMNS} for e in ev]
    return pl.DataFrame(rows, schema=_EVENT_SCHEMA, orient="row") if rows else pl.DataFrame(schema=_EVENT_SCHEMA)


def _sweep(items: list[dict], tol: float) -> list[list[dict]]:
    """Cluster events whose [start, end] windows (log-step) are at most tol decades apart."""
    clusters: list[list[dict]] = []
    hi = -math.inf
    for e in sorted(items, key=lambda e: e["_lo"]):
        if clusters and e["_lo"] - hi <= tol:
            clusters[-1].append(e)
            hi = max(hi, e["_hi"])
        else:
            clusters.append([e])
            hi = e["_hi"]
    return clusters


def _kind_labels(cl: list[dict]) -> list[str]:
    out: list[str] = []
    for k, lab in KIND_LABELS.items():
        for e in cl:
            name = f"{e['series']} change" if k == "curve_change" else lab
            if e["kind"] == k and name not in out:
                out.append(name)
    return out


def _verdict(sig: bool | None) -> str:
    return {True: "significant", False: "not significant"}.get(sig, "unknown (no intervals)")  # type: ignore[arg-type]


def _summarize(cl: list[dict], max_items: int) -> tuple[list[str], list[str], list[str]]:
    """what/evidence items of one transition (loss and LLC events one by one, BIF events grouped) and the
    significance items of its BIF events (one per BIF item of `what`)."""
    whats, evid, sigs = [], [], []
    for e in sorted((e for e in cl if e["kind"] in _PRIMARY), key=lambda e: (_PRIMARY.index(e["kind"]), e["step"])):
        whats.append(e["what"])
        evid.append(e["evidence"])
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in cl:
        if e["kind"] not in _PRIMARY:
            groups.setdefault((e["kind"], e["_group"]), []).append(e)
    for (_kind, label), es in sorted(groups.items()):
        es = sorted(es, key=lambda e: -e["_mag"])
        if len(es) <= max_items:
            whats += [e["what"] for e in es]
            evid += [e["evidence"] for e in es]
            sigs += [f"{e['what']}: {_verdict(e['significant'])}" for e in es]
            continue
        n_sig = sum(e["significant"] is True for e in es)
        n_unknown = sum(e["significant"] is None for e in es)
        unknown = f", {n_unknown} unknown (no intervals)" if n_unknown else ""
        sigs.append(f"{label}: {n_sig} of {len(es)} pairs significant{unknown}")
        names = ", ".join(e["series"] for e in es[:max_items])
        whats.append(f"{label} in {len(es)} pairs ({names}, …)")
        steps = sorted(e["step"] for e in es)
        evid.append(
            f"strongest {es[0]['evidence']}; {len(es)} pairs at steps {steps[0]:,.0f}–{steps[-1]:,.0f} "
            f"(median {float(np.median(steps)):,.0f})"
        )
    return whats, evid, sigs


def detect_transitions(
    training_curve: pl.DataFrame | None,
    llc_summary: pl.DataFrame | None,
    bif_pairs: pl.DataFrame | None,
    params: DetectParams | None = None,
    *,
    curves: Mapping[str, pl.DataFrame] | None = None,
    max_items: int = 3,
) -> pl.DataFrame:
    """One row per phase transition: step range, what changed and the evidence.

    Loss drops, LLC changes and changes of `curves` whose windows lie within `merge_decades` (log10 step)
    of each other form the transitions; each BIF event (sign flip, |BIF| peak) joins the transition whose
    window, widened by `merge_decades`, contains it; BIF events near no loss/LLC event form transitions of
    their own. More than `max_items` BIF events of one sort are summarized ("harmful |BIF| peak in 32 pairs
    (…)").
    Inputs as in `detect_events`. Returns: step_start, step_end (Int64), kind ("loss drop, LLC change, …"),
    what, evidence (items joined by "; "), significance (one item per BIF item of `what`, "…: significant",
    "…: not significant" or "…: unknown (no intervals)", or "k of n pairs significant" for a summarized
    group; null when the transition has no BIF event).
    """
    p = params or DetectParams()
    events = _events(training_curve, llc_summary, bif_pairs, p, curves)
    for e in events:
        lo, hi = sorted((e["step_start"], e["step_end"]))
        e["_lo"], e["_hi"], e["_c"] = (float(v) for v in log_step(np.array([lo, hi, e["step"]])))
    tol = p.merge_decades
    clusters = _sweep([e for e in events if e["kind"] in _PRIMARY], tol)
    spans = [(min(e["_lo"] for e in cl) - tol, max(e["_hi"] for e in cl) + tol) for cl in clusters]
    rest = []
    for e in (e for e in events if e["kind"] not in _PRIMARY):
        inside = [k for k, (lo, hi) in enumerate(spans) if lo <= e["_c"] <= hi]
        if inside:
            k = min(inside, key=lambda k: abs(e["_c"] - (spans[k][0] + spans[k][1]) / 2))
            clusters[k].append(e)
        else:
            rest.append(e)
    clusters += _sweep(rest, tol)
    rows = []
    for cl in clusters:
        prim = [e for e in cl if e["kind"] in _PRIMARY] or cl
        lo = min(min(e["step_start"], e["step_end"]) for e in prim)
        hi = max(max(e["step_start"], e["step_end"]) for e in prim)
        whats, evid, sigs = _summarize(cl, max_items)
        rows.append(
            {
                "step_start": int(math.floor(lo)),
                "step_end": int(math.ceil(hi)),
                "kind": ", ".join(_kind_labels(cl)),
                "what": "; ".join(whats),
                "evidence": "; ".join(evid),
                "significance": "; ".join(sigs) if sigs else None,
            }
        )
    schema = {
        "step_start": pl.Int64,
        "step_end": pl.Int64,
        "kind": pl.String,
        "what": pl.String,
        "evidence": pl.String,
        "significance": pl.String,
    }
    out = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    return out.sort("step_start")

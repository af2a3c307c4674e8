"""The standard report of one study, assembled from the view frames (no DuckDB here: frames come in)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import polars as pl

from sbif_dsl.report import charts
from sbif_dsl.report.detect import DetectParams, detect_events, detect_transitions, pairs_frame
from sbif_dsl.report.html import Section, header_from_frames, render_report
from sbif_dsl.report.lds import NOTE as LDS_NOTE
from sbif_dsl.report.lds import lds_items
from sbif_dsl.report.tables import Html, agreement_table, transitions_table

DEFAULT_PAIRS = (("dog", "cat"), ("dog", "sparrow"), ("dog", "lily"))


class SectionOptions(TypedDict, total=False):
    """The keywords of `standard_sections` that `build_report` passes on as they are."""

    params: DetectParams | None
    pairs: Sequence[tuple[str, str]] | None
    class_pairs: Sequence[tuple[str, str]] | None
    heatmap_steps: Sequence[int] | None


def _frame(frames: Mapping[str, pl.DataFrame | None], name: str, study: str | None) -> pl.DataFrame | None:
    df = frames.get(name)
    if df is None or df.is_empty():
        return None
    if study is not None and "study" in df.columns:
        df = df.filter(pl.col("study") == study)
    return None if df.is_empty() else df


def default_pairs(bif: pl.DataFrame, k: int = 3) -> list[tuple[str, str]]:
    """DEFAULT_PAIRS when the study has them (the toy), else the k pairs whose BIF swings most over training
    (sample × sample: off-diagonal only, the diagonal is a self-variance; class × class: all pairs)."""
    df = pairs_frame(bif, "bif_corr" if "bif_corr" in bif.columns else "bif_cov")
    have = set(zip(df["source"].to_list(), df["target"].to_list(), strict=True))
    if all(p in have for p in DEFAULT_PAIRS):
        return list(DEFAULT_PAIRS)
    if "source_idx" in bif.columns:
        df = df.filter(pl.col("source") != pl.col("target"))
    swing = (
        df.group_by("source", "target")
        .agg((pl.col("value").max() - pl.col("value").min()).alias("swing"))
        .sort("swing", "source", "target", descending=[True, False, False])
    )
    return list(zip(swing["source"].head(k).to_list(), swing["target"].head(k).to_list(), strict=True))


def transition_steps(steps: Sequence[int], transitions: pl.DataFrame, k: int = 6) -> list[int]:
    """Checkpoints for heatmap panels: the first, one inside each transition (nearest its log-midpoint), the
    last; topped up with log-spaced ones when there are few transitions; at most k."""
    steps = sorted(set(steps))
    if not steps:
        return []
    u = np.log10(np.asarray(steps, dtype=float) + 1)
    want = [steps[0]]
    for r in transitions.iter_rows(named=True):
        mid = (np.log10(r["step_start"] + 1) + np.log10(r["step_end"] + 1)) / 2
        want.append(steps[int(np.argmin(np.abs(u - mid)))])
    want.append(steps[-1])
    picked = list(dict.fromkeys(want))
    if len(picked) > k:
        picked = [picked[0], *picked[1 : k - 1], picked[-1]]
    for st in charts.pick_steps(steps, k):
        if len(picked) >= min(4, len(steps)):
            break
        if st not in picked:
            picked.append(st)
    return sorted(picked)


def validation_section(
    agreement: pl.DataFrame | None,
    agreement_pairs: pl.DataFrame | None,
    loo: pl.DataFrame | None = None,
    lds: pl.DataFrame | None = None,
) -> Section | None:
    """BIF vs retraining: per `agreement` analysis a scatter with a checkpoint slider, the agreement curve
    and the pooled numbers (`agreement`, `agreement_pairs` views); per `lds` analysis the LDS over training
    (`lds` view). A study with a `loo` analysis but no agreement gets a note saying how to add one; none of
    them: no section."""
    if lds is not None and "analysis" not in lds.columns:
        lds = None
    lds_part = lds_items(lds) if lds is not None else []
    names: list[str] = []
    for df in (agreement, agreement_pairs):
        if df is not None and "analysis" in df.columns:
            names += [n for n in df["analysis"].unique(maintain_order=True).to_list() if n not in names]
    title = "Validation: BIF vs leave-one-out" if not lds_part else "Validation: BIF vs retraining"
    note = (
        "The leave-one-out (LOO) ground truth retrains without each source item and measures every target's "
        "loss: LOO Δ = l_target(full run) − l_target(run without the source), negative = helpful, as the BIF. "
        "Each agreement analysis compares one BIF analysis with it over the off-diagonal pairs."
    )
    if lds_part:
        note = LDS_NOTE if not names and loo is None else f"{note} {LDS_NOTE}"
    if not names:
        if lds_part:
            return Section(title, lds_part, note=note)
        if loo is None:
            return None
        return Section(
            title,
            "This study has leave-one-out results but no `agreement` analysis; add `- kind: agreement` (with "
            "`bif:` and `loo:`) to the spec's analyses to compare them with the BIF here.",
            note=note,
        )
    items: list = []
    for name in sorted(names):
        stats = agreement.filter(pl.col("analysis") == name) if agreement is not None else None
        pairs = agreement_pairs.filter(pl.col("analysis") == name) if agreement_pairs is not None else None
        first = (stats if stats is not None and stats.height else pairs).row(0, named=True)  # type: ignore[union-attr]
        what = (
            f"{first.get('bif_analysis') or '?'} ({first.get('bif_value') or '?'}) "
            f"vs {first.get('loo_analysis') or '?'}"
        )
        items.append(Html(f"<h3>{html.escape(name)}: {html.escape(what)}</h3>"))
        if pairs is not None and pairs.height:
            items.append(charts.agreement_chart(pairs, stats, title=f"{name}: BIF vs LOO per checkpoint"))
        if stats is not None and stats.height:
            items.append(Html('<p class="note">Pooled over all pairs and checkpoints:</p>'))
            items.append(agreement_table(stats))
    return Section(title, items + lds_part, note=note)


def standard_sections(
    frames: Mapping[str, pl.DataFrame | None],
    *,
    study: str | None = None,
    params: DetectParams | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    class_pairs: Sequence[tuple[str, str]] | None = None,
    heatmap_steps: Sequence[int] | None = None,
) -> list[Section]:
    """Sections for whatever frames are present and non-empty (keys are view names: training_curve,
    llc_summary, bif, class_bif, induction_score, class_loss, loo, agreement, agreement_pairs, lds). Transitions
    are detected from the training curve, the LLC and the selected BIF pairs (class pairs when the study has
    no sample BIF); where the BIF frames carry 95% intervals each sign flip and peak is called significant or
    not (`significance.py`)."""
    p = params or DetectParams()
    tc = _frame(frames, "training_curve", study)
    llc = _frame(frames, "llc_summary", study)
    bif = _frame(frames, "bif", study)
    cbif = _frame(frames, "class_bif", study)
    ind = _frame(frames, "induction_score", study)
    closs = _frame(frames, "class_loss", study)
    validation = validation_section(
        _frame(frames, "agreement", study),
        _frame(frames, "agreement_pairs", study),
        _frame(frames, "loo", study),
        _frame(frames, "lds", study),
    )

    value = p.value
    sel = list(pairs) if pairs else (default_pairs(bif) if bif is not None else [])
    csel = list(class_pairs) if class_pairs else (default_pairs(cbif, 4) if cbif is not None else [])
    tracked = []
    if bif is not None:
        tracked.append(pairs_frame(bif, value, sel))
    if cbif is not None:
        tracked.append(pairs_frame(cbif, value, csel))
    bp = pl.concat(tracked, how="diagonal_relaxed") if tracked else None
    curves = {"induction score": ind.select("step", value="score")} if ind is not None else None
    events = detect_events(tc, llc, bp, p, curves=curves)
    transitions = detect_transitions(tc, llc, bp, p, curves=curves)
    if heatmap_steps is None and bif is not None:
        heatmap_steps = transition_steps(bif["step"].unique().to_list(), transitions)

    cheat = None
    if cbif is not None:
        cheat = transition_steps(cbif["step"].unique().to_list(), transitions)
    out = [
        Section(
            "Detected transitions",
            transitions_table(transitions),
            note=(
                "Loss drops and LLC (and induction score) changes, the steepest stretches on a log-step "
                "axis, define the transitions; "
                "sign flips and |BIF| peaks of the tracked influence curves are attached to the nearest one. "
                "A sign flip is significant when, on each side, min_run consecutive checkpoints have 95% "
                "intervals excluding 0 with that side's sign; a peak when its interval excludes 0 and clears "
                "the intervals of the valleys bounding its prominence. The intervals measure the spread between "
                "chains only, not a bias every chain shares (e.g. a checkpoint that is not a local minimum). "
                f"Influence values are {value}: {charts.sign_note(value)}."
            ),
        )
    ]
    if tc is not None:
        out.append(Section("Training loss", charts.loss_chart(tc, transitions=transitions)))
    screens = _frame(frames, "diagnostics", study)
    failing: list[int] = []
    if screens is not None and "verdict" in screens.columns:
        failing = screens.filter(pl.col("verdict") == "fail")["step"].unique().sort().to_list()
        bad = screens.filter(pl.col("verdict") != "ok")["step"].unique().sort().to_list()
        note = (
            f"{len(bad)} of {screens['step'].n_unique()} checkpoints flagged (steps {', '.join(map(str, bad[:12]))}"
            f"{', ...' if len(bad) > 12 else ''}): read the influence values there with the reason in mind "
            "(hover a mark)."
            if bad
            else "every checkpoint passes the screens"
        )
        out.append(Section("Convergence screens", charts.screens_chart(screens), note=note))
    if llc is not None:
        out.append(Section("Local learning coefficient", charts.llc_chart(llc, transitions=transitions)))
    if bif is not None:
        out.append(
            Section(
                "Sample influence over training",
                [
                    charts.influence_chart(
                        bif, value=value, pairs=sel, events=events, transitions=transitions, failing=failing
                    ),
                    charts.heatmap_grid(bif, heatmap_steps, value=value),
                    charts.heatmap_slider(bif, value=value),
                ],
            )
        )
    if cbif is not None:
        out.append(
            Section(
                "Token-class influence over training",
                [
                    charts.influence_chart(
                        cbif,
                        value=value,
                        pairs=csel,
                        events=events,
                        transitions=transitions,
                        failing=failing,
                        title="Class × class influence trajectories",
                    ),
                    charts.heatmap_grid(
                        cbif, cheat, value=value, title="Class × class influence at selected checkpoints"
                    ),
                ],
            )
        )
    if validation is not None:
        out.append(validation)
    if ind is not None:
        out.append(Section("Induction score", charts.induction_chart(ind, transitions=transitions)))
    if closs is not None:
        out.append(Section("Loss per token class", charts.class_loss_chart(closs, transitions=transitions)))
    return out


def build_report(
    path: str | Path,
    frames: Mapping[str, pl.DataFrame | None],
    *,
    study: str | None = None,
    extra_sections: Sequence[Section] = (),
    **options: Unpack[SectionOptions],
) -> Path:
    """Header from the `studies`/`stages` frames, the standard sections (`options`: params, pairs, class_pairs,
    heatmap_steps, as in `standard_sections`), then `extra_sections`."""
    studies = frames.get("studies")
    if studies is not None and not studies.is_empty():
        header = header_from_frames(studies, frames.get("stages"), study)
    else:
        header = {"study": study or ""}
    study = study or header.get("study") or None
    secs = standard_sections(frames, study=study, **options)
    return render_report(path, header=header, sections=[*secs, *extra_sections])

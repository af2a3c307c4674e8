"""`sbif report`: read a study's cached results through the SQL views and render the HTML report.

Never computes: if the spec's stages are not all cached it says which are missing and how to compute them.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from .errors import MissingResultsError, UsageError
from .plan import build_plan
from .runtime import runtime_for
from .spec import LoadedSpec
from .spec.models import analysis_name
from .store import Store, fetch_frame

REPORT_VIEWS = [
    "studies",
    "stages",
    "training_curve",
    "diagnostics",
    "llc_summary",
    "bif",
    "class_bif",
    "induction_score",
    "class_loss",
    "loo",
    "agreement",
    "agreement_pairs",
    "lds",
]


def _frames(con, study: str, bif_analysis: str | None) -> dict[str, pl.DataFrame | None]:
    existing = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    frames: dict[str, pl.DataFrame | None] = {}
    for view in REPORT_VIEWS:
        if view not in existing:
            frames[view] = None
            continue
        sql = f"SELECT * FROM {view} WHERE study = ?"
        params: list = [study]
        if view == "bif" and bif_analysis:
            sql += " AND analysis = ?"
            params.append(bif_analysis)
        order = {"studies": "", "stages": "", "agreement_pairs": " ORDER BY step, source_idx, target_idx"}
        frames[view] = fetch_frame(con, sql + order.get(view, " ORDER BY step"), params)
    return frames


def write_report(spec: LoadedSpec, store: Store, out: Path | None = None) -> Path:
    from .report import DetectParams, Section, build_report, section_chart

    study = spec.study
    plan = build_plan(runtime_for(spec), store)
    if plan.missing:
        kinds = sorted({s.kind for s in plan.missing})
        raise MissingResultsError(
            f"{len(plan.missing)} of {len(plan.stages)} stages of study {study.name!r} are not in the cache "
            f"({', '.join(kinds)}; e.g. {plan.missing[0].label}); hint: run `sbif run {spec.path}` first "
            "(with the same --cache)"
        )
    first_bif = next((a for a in study.analyses if a.kind == "bif" and (a.target or a.source) == a.source), None)
    extra = []
    with store.connect(read_only=True) as con:
        frames = _frames(con, study.name, analysis_name(first_bif) if first_bif else None)
        for sec in study.report.sections:
            try:
                df = fetch_frame(con, sec.sql)
            except duckdb.Error as e:
                raise UsageError(f"report section {sec.title!r}: SQL failed: {str(e).splitlines()[0]}") from None
            enc = {k: v for k, v in {"x": sec.x, "y": sec.y, "color": sec.color}.items() if v}
            extra.append(Section(sec.title, section_chart(df, sec.chart, enc, sec.title)))
    params = DetectParams(**study.report.detect.model_dump())  # the spec's settings, converted once
    out = out or Path("reports") / f"{study.name}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    return build_report(
        out,
        frames,
        study=study.name,
        params=params,
        pairs=study.report.pairs or None,
        class_pairs=study.report.class_pairs or None,
        heatmap_steps=study.report.heatmap_steps,
        extra_sections=extra,
    )


def write_sweep_report(sweep, out: Path | None = None) -> Path:
    """The sweep report (report/sweep.py) of a `Sweep` whose cells are all cached; computes nothing."""
    from .report import DetectParams, default_pairs, render_report
    from .report.sweep import sweep_sections

    missing = {}
    for cell in sweep.cells:
        keys = [r[0] for r in cell.stages()]
        n = len(keys) - len(cell.store.complete_keys(keys))
        if n:
            missing[cell.name] = n
    if missing:
        first = next(iter(missing))
        raise MissingResultsError(
            f"{len(missing)} of {len(sweep.cells)} cells of sweep {sweep.name!r} are not all cached "
            f"(e.g. {first}: {missing[first]} stages); hint: run `sbif run {sweep.spec.path}` first "
            "(with the same --cache)"
        )
    study = sweep.spec.study
    first_bif = next((a for a in study.analyses if a.kind == "bif" and (a.target or a.source) == a.source), None)
    names = [c.name for c in sweep.cells]
    marks = ", ".join("?" for _ in names)
    with sweep.store.connect(read_only=True) as con:
        cells = fetch_frame(con, "SELECT * FROM sweep WHERE sweep = ? ORDER BY cell, position", [sweep.name])
        cells = cells.filter(pl.col("study").is_in(names))

        def frame(view: str, extra: str = "", params: tuple = ()) -> pl.DataFrame:
            sql = f"SELECT * FROM {view} WHERE study IN ({marks}){extra} ORDER BY study, step"
            return fetch_frame(con, sql, [*names, *params])

        bif = frame("bif", " AND analysis = ?", (analysis_name(first_bif),)) if first_bif else None
        llc, agreement = frame("llc_summary"), frame("agreement")
    pairs = list(study.report.pairs)
    if not pairs and bif is not None and not bif.is_empty():
        pairs = default_pairs(bif.filter(pl.col("study") == names[0]))
    sections = sweep_sections(
        cells, bif=bif, llc=llc, agreement=agreement, pairs=pairs,
        params=DetectParams(**study.report.detect.model_dump()),
    )  # fmt: skip
    out = out or Path("reports") / f"{study.name}.html"
    header = {"study": study.name, "title": study.title or f"sweep {study.name}", "description": study.description}
    header["spec_yaml"] = sweep.spec.text
    return render_report(out, header=header, sections=sections)

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

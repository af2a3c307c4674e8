"""Reporting layer: transition detection, Altair charts and a self-contained HTML report.

Works on Polars frames shaped like the store's SQL views; never runs models, never opens DuckDB.
Sign convention everywhere: BIF = −Cov (normalized −Corr), negative = helpful.
"""

from sbif_dsl.report.build import build_report, default_pairs, standard_sections, validation_section
from sbif_dsl.report.charts import (
    agreement_chart,
    class_loss_chart,
    heatmap_grid,
    heatmap_slider,
    induction_chart,
    influence_chart,
    llc_chart,
    loss_chart,
    section_chart,
)
from sbif_dsl.report.detect import (
    DetectParams,
    changepoints,
    detect_events,
    detect_transitions,
    loss_drops,
    pairs_frame,
    peaks,
    zero_crossings,
)
from sbif_dsl.report.html import Section, header_from_frames, render_report
from sbif_dsl.report.significance import flip_significance, interval_sign, peak_significance
from sbif_dsl.report.tables import Html, agreement_table, table_html, transitions_table

__all__ = [
    "DetectParams",
    "Html",
    "Section",
    "agreement_chart",
    "agreement_table",
    "build_report",
    "changepoints",
    "class_loss_chart",
    "default_pairs",
    "detect_events",
    "detect_transitions",
    "flip_significance",
    "header_from_frames",
    "heatmap_grid",
    "heatmap_slider",
    "induction_chart",
    "influence_chart",
    "interval_sign",
    "llc_chart",
    "loss_chart",
    "loss_drops",
    "pairs_frame",
    "peak_significance",
    "peaks",
    "render_report",
    "section_chart",
    "standard_sections",
    "table_html",
    "transitions_table",
    "validation_section",
    "zero_crossings",
]

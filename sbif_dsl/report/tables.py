"""HTML tables for the report (escaped), including the detected-transitions table."""

from __future__ import annotations

import html as _html
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import polars as pl


class Html(str):
    """A trusted HTML fragment (produced by this package); plain `str` content is escaped by the renderer."""


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def table_html(
    df: pl.DataFrame,
    *,
    columns: Mapping[str, str] | None = None,
    max_rows: int = 500,
    css_class: str = "data",
    split: Mapping[str, str] | None = None,
) -> Html:
    """An escaped HTML table. columns: {column: header label} (order kept); split: {column: separator}
    renders that column's joined items as a list, one per line."""
    cols = dict(columns) if columns else {c: c for c in df.columns}
    rows = df.head(max_rows).select(list(cols)).iter_rows()
    numeric = {c for c in cols if df.schema[c].is_numeric()}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{_html.escape(h)}</th>' for c, h in cols.items())
    body = []
    for r in rows:
        cells = []
        for c, v in zip(cols, r, strict=True):
            if split and c in split and isinstance(v, str):
                text = "<br>".join(_html.escape(p) for p in v.split(split[c]))
            else:
                text = _html.escape(_fmt(v))
            cells.append(f'<td class="{"num" if c in numeric else ""}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if df.height > max_rows:
        more = f'<p class="note">first {max_rows} of {df.height} rows shown</p>'
    if df.height == 0:
        body.append(f'<tr><td colspan="{len(cols)}" class="empty">(none)</td></tr>')
    return Html(
        f'<div class="table-wrap"><table class="{css_class}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def transitions_table(transitions: pl.DataFrame) -> Html:
    """The detected phase transitions (frame from `detect_transitions`) as an HTML table; with a column of
    which sign flips and |BIF| peaks the 95% intervals make significant when the frame has one."""
    t = transitions.with_row_index("n", offset=1)
    columns = {
        "n": "#",
        "step_start": "from step",
        "step_end": "to step",
        "kind": "detected by",
        "what": "what changed",
        "evidence": "evidence",
    }
    if "significance" in t.columns and t["significance"].is_not_null().any():
        columns["significance"] = "significant? (95% intervals)"
    return table_html(
        t,
        columns=columns,
        split={"what": "; ", "evidence": "; ", "significance": "; "},
        css_class="data transitions",
    )


AGREEMENT_COLUMNS = {
    "bif_analysis": "BIF analysis",
    "bif_value": "BIF value",
    "loo_analysis": "LOO analysis",
    "n_pairs": "pairs × checkpoints",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "sign_agreement": "sign agreement",
    "sign_agreement_weighted": "sign agreement (|LOO|-weighted)",
}


def agreement_table(stats: pl.DataFrame) -> Html:
    """The pooled (scope 'overall') rows of the `agreement` view: BIF vs LOO over all pairs and checkpoints."""
    df = stats.filter(pl.col("scope") == "overall") if "scope" in stats.columns else stats
    return table_html(df, columns={c: h for c, h in AGREEMENT_COLUMNS.items() if c in df.columns})

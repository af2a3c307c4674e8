"""One self-contained HTML file: header, sections of Altair charts and tables, all JavaScript inlined.

The Vega, Vega-Lite and vega-embed sources come from `vl_convert.javascript_bundle` (no network at view
time). Each chart gets its own container `<div id="sbif-chart-N" data-sbif-chart>`; after every embed has
settled the page records its render status on <body> (data-charts-expected, data-charts-rendered,
data-render-done) and in <pre id="sbif-render-status"> (JSON with errors and warnings). The browser test
harness (tests/browser.py) reads these.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl

from sbif_dsl.report.tables import Html, table_html

Content = alt.TopLevelMixin | dict | Html | str | pl.DataFrame


@dataclass
class Section:
    """A titled block of the report. content: one item or a list; an Altair chart or a Vega-Lite dict
    (embedded), an `Html` fragment (inserted as is), a DataFrame (a table) or a plain str (escaped text)."""

    title: str
    content: Content | Sequence[Content] = ()
    note: str = ""
    anchor: str | None = None
    items: list[Content] = field(init=False)

    def __post_init__(self) -> None:
        c = self.content
        single = isinstance(c, str | dict | pl.DataFrame | alt.TopLevelMixin)
        self.items = [c] if single else list(c)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one inline script (window.vegaEmbed), for Altair's Vega-Lite major."""
    import vl_convert as vlc

    want = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    version = want if want in vlc.get_vegalite_versions() else None
    return _script_safe(vlc.javascript_bundle(vl_version=version))


def _script_safe(js: str) -> str:
    """Text that cannot end or comment its <script> element early."""
    return js.replace("</script", "<\\/script").replace("<!--", "<\\!--")


CSS = """
:root { --fg:#1d2733; --muted:#5b6776; --line:#dde3ea; --bg:#f6f8fa; --accent:#1f4e79; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
header.report { background:#fff; border:1px solid var(--line); border-radius:10px; padding:20px 24px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h1 .study { color: var(--muted); font-weight: 400; font-size: 18px; margin-left: 8px; }
h2 { font-size: 20px; margin: 0 0 6px; color: var(--accent); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.lead { margin: 4px 0 12px; color: var(--muted); }
p.note, p.text { color: var(--muted); margin: 4px 0 10px; }
.sign { display:inline-block; background:#fff6e6; border:1px solid #f0d49b; border-radius:6px;
        padding:6px 10px; margin:8px 0; font-size:14px; }
dl.meta { display:grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 10px 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px;
             word-break: break-all; }
nav.toc { margin: 14px 0 0; font-size: 14px; }
nav.toc a { margin-right: 14px; color: var(--accent); text-decoration: none; white-space: nowrap; }
nav.toc a:hover { text-decoration: underline; }
section.block { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 24px;
                margin-top:18px; }
details { margin: 8px 0; }
details > summary { cursor: pointer; color: var(--accent); font-weight: 600; }
pre.spec { background:#0f1720; color:#e6edf3; padding:12px 14px; border-radius:8px; overflow:auto;
           font-size:12.5px; max-height: 480px; }
.table-wrap { overflow: auto; margin: 6px 0; max-height: 560px; }
table.data { border-collapse: collapse; font-size: 13px; min-width: 40%; }
table.data th, table.data td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: left;
                               vertical-align: top; }
table.data th { background: #eef2f6; font-weight: 600; position: sticky; top: 0; }
table.data tr:nth-child(even) td { background: #fafbfc; }
table.data td.num, table.data th.num { text-align: right; font-variant-numeric: tabular-nums;
                                       white-space: nowrap; }
table.data td.empty { color: var(--muted); font-style: italic; }
table.transitions td:nth-child(5), table.transitions td:nth-child(6) { min-width: 300px; }
table.transitions td:nth-child(7) { min-width: 220px; }
.chart { margin: 10px 0 4px; overflow-x: auto; }
.chart .vega-embed { max-width: 100%; }
.chart-error { color: #b00020; font-family: ui-monospace, monospace; white-space: pre-wrap; }
footer { color: var(--muted); font-size: 12px; margin-top: 28px; }
"""

PROBE_JS = """
window.__sbif = {errors: [], warnings: []};
window.addEventListener('error', function (e) {
  var t = e.target;
  var src = t && t !== window && (t.src || t.href);
  window.__sbif.errors.push(src ? 'resource failed: ' + src : 'error: ' + e.message +
    (e.filename ? ' (' + e.filename.split('/').pop() + ':' + e.lineno + ')' : ''));
}, true);
window.addEventListener('unhandledrejection', function (e) {
  var r = e.reason; window.__sbif.errors.push('unhandled rejection: ' + (r && (r.message || r) || r));
});
(function () {
  var ce = console.error, cw = console.warn;
  var s = function (a) { return Array.prototype.map.call(a, function (x) {
    return x && x.message ? x.message : String(x); }).join(' '); };
  console.error = function () {
    window.__sbif.errors.push('console.error: ' + s(arguments)); ce.apply(console, arguments); };
  console.warn = function () {
    window.__sbif.warnings.push('console.warn: ' + s(arguments)); cw.apply(console, arguments); };
})();
"""

EMBED_JS = """
(function () {
  var st = window.__sbif;
  var specs = JSON.parse(document.getElementById('sbif-specs').textContent);
  var ids = Object.keys(specs);
  function finish() {
    var n = ids.filter(function (id) {
      return document.querySelector('#' + id + ' svg, #' + id + ' canvas'); }).length;
    document.body.dataset.chartsExpected = String(ids.length);
    document.body.dataset.chartsRendered = String(n);
    document.getElementById('sbif-render-status').textContent =
      JSON.stringify({expected: ids.length, rendered: n, errors: st.errors, warnings: st.warnings});
    document.body.dataset.renderDone = '1';
  }
  if (typeof vegaEmbed !== 'function') { st.errors.push('vegaEmbed is not loaded'); finish(); return; }
  var opts = {renderer: 'svg', actions: {export: true, source: false, compiled: false, editor: false}};
  Promise.all(ids.map(function (id) {
    return vegaEmbed('#' + id, specs[id], opts).then(function (res) { return res.view.runAsync(); })
      .catch(function (err) {
        console.error('chart ' + id + ' failed: ' + (err && err.message || err));  // recorded by the probe
        var el = document.getElementById(id);
        el.innerHTML = '<div class="chart-error"></div>';
        el.firstChild.textContent = 'This chart failed to render: ' + (err && err.message || err);
      });
  })).then(finish, function (err) { st.errors.push(String(err)); finish(); });
})();
"""


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in used:
        slug, k = f"{base}-{k}", k + 1
    used.add(slug)
    return slug


def _meta(pairs: Mapping[str, Any]) -> str:
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in pairs.items() if v not in (None, ""))
    return f'<dl class="meta">{items}</dl>' if items else ""


def _stage_tables(stages: pl.DataFrame) -> str:
    """Timings summary by stage kind, and every stage (content key, when, how long) in a <details>."""
    if stages.is_empty():
        return '<p class="note">no stages recorded</p>'
    agg = [pl.len().alias("stages")]
    if "wall_s" in stages.columns:
        agg += [pl.col("wall_s").sum().alias("total wall s"), pl.col("wall_s").max().alias("max wall s")]
    if "created_at" in stages.columns:
        agg += [pl.col("created_at").min().alias("first"), pl.col("created_at").max().alias("last")]
    if "device" in stages.columns:
        agg.append(pl.col("device").drop_nulls().unique().sort().str.join(", ").alias("device"))
    order = stages.with_row_index("_i").group_by("kind").agg(pl.col("_i").min()).sort("_i")["kind"]
    summary = stages.group_by("kind").agg(agg)
    summary = order.to_frame().join(summary, on="kind", how="left")
    cols = [c for c in ("kind", "step", "status", "key", "created_at", "wall_s", "device") if c in stages.columns]
    full = stages.select(cols)
    if "key" in cols:
        full = full.with_columns(pl.col("key").str.slice(0, 16))
    return (
        "<h3>Stage timings</h3>"
        + table_html(summary)
        + f"<details><summary>All {stages.height} stages with their content keys</summary>"
        + table_html(full, max_rows=5000)
        + "</details>"
    )


def header_from_frames(studies: pl.DataFrame, stages: pl.DataFrame | None = None, study: str | None = None) -> dict:
    """The `render_report` header from the `studies` and `stages` views (one study)."""
    if studies.is_empty():
        raise ValueError("studies frame is empty")
    row = (studies.filter(pl.col("study") == study) if study else studies).row(0, named=True)
    st = stages if stages is not None else pl.DataFrame()
    if not st.is_empty() and "study" in st.columns:
        st = st.filter(pl.col("study") == row["study"])
    versions: dict[str, str] = {}
    for col, name in (
        ("sbif_version", "sbif_dsl"),
        ("torch_version", "torch"),
        ("python_version", "python"),
        ("device", "device"),
    ):
        if col in st.columns:
            vals = st[col].drop_nulls().unique().sort().to_list()
            if vals:
                versions[name] = ", ".join(map(str, vals))
    return {
        "study": row["study"],
        "title": row.get("title"),
        "description": row.get("description"),
        "spec_yaml": row.get("spec_yaml"),
        "spec_hash": row.get("spec_hash"),
        "seed": row.get("seed"),
        "updated_at": row.get("updated_at"),
        "versions": versions,
        "stages": st,
    }


def _header(h: Mapping[str, Any], toc: list[tuple[str, str]]) -> str:
    study = h.get("study", "")
    title = h.get("title") or study or "sbif report"
    out = [f'<header class="report"><h1>{_esc(title)}']
    if study and study != title:
        out.append(f'<span class="study">study: {_esc(study)}</span>')
    out.append("</h1>")
    if h.get("description"):
        out.append(f'<p class="lead">{_esc(h["description"])}</p>')
    out.append(
        '<div class="sign"><b>Sign convention.</b> BIF = −Cov(l<sub>source</sub>, l<sub>target</sub>) '
        "(normalized: −Corr) over the local posterior. <b>Negative = helpful</b>: up-weighting the source "
        "lowers the target's loss; positive = harmful.</div>"
    )
    meta = {
        "study": study,
        "spec hash": h.get("spec_hash"),
        "seed": h.get("seed"),
        "results updated": h.get("updated_at"),
        "report generated": h.get("generated_at") or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    for k, v in (h.get("versions") or {}).items():
        meta[f"{k} version" if k not in ("device",) else k] = v
    out.append(_meta(meta))
    keys = h.get("content_keys")
    if isinstance(keys, pl.DataFrame) and not keys.is_empty():
        out.append("<details><summary>Content keys</summary>" + table_html(keys, max_rows=5000) + "</details>")
    elif isinstance(keys, Mapping) and keys:
        out.append("<details><summary>Content keys</summary>" + _meta(keys) + "</details>")
    if h.get("spec_yaml"):
        out.append(f'<details><summary>Spec (YAML)</summary><pre class="spec">{_esc(h["spec_yaml"])}</pre></details>')
    stages = h.get("stages")
    if isinstance(stages, pl.DataFrame):
        out.append(_stage_tables(stages))
    if toc:
        links = "\n".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in toc)
        out.append(f'<nav class="toc"><b>Sections:</b> {links}</nav>')
    out.append("</header>")
    return "".join(out)


def render_report(
    path: str | Path,
    *,
    header: Mapping[str, Any],
    sections: Sequence[Section],
    title: str | None = None,
) -> Path:
    """Write the report to `path` (parents created) and return it.

    header keys (all optional): study, title, description, spec_yaml, spec_hash, seed, updated_at,
    generated_at, versions (dict name → version), content_keys (dict or DataFrame), stages (the `stages`
    view: kind, step, status, key, created_at, wall_s, device). `header_from_frames` builds it from the views.
    """
    path = Path(path)
    specs: dict[str, dict] = {}
    used: set[str] = set()
    toc, body = [], []
    for sec in sections:
        anchor = sec.anchor or _slug(sec.title, used)
        toc.append((anchor, sec.title))
        parts = [f'<section class="block" id="{_esc(anchor)}"><h2>{_esc(sec.title)}</h2>']
        if sec.note:
            parts.append(f'<p class="note">{_esc(sec.note)}</p>')
        for item in sec.items:
            if isinstance(item, alt.TopLevelMixin | dict):
                cid = f"sbif-chart-{len(specs) + 1}"
                specs[cid] = item if isinstance(item, dict) else item.to_dict()
                parts.append(f'<div class="chart" id="{cid}" data-sbif-chart></div>')
            elif isinstance(item, Html):
                parts.append(str(item))
            elif isinstance(item, pl.DataFrame):
                parts.append(table_html(item))
            elif isinstance(item, str):
                parts.append(f'<p class="text">{_esc(item)}</p>')
            else:
                raise TypeError(f"section {sec.title!r}: cannot render a {type(item).__name__}")
        parts.append("</section>")
        body.append("".join(parts))
    page_title = title or f"sbif report: {header.get('title') or header.get('study') or ''}".strip()
    # "<" only occurs inside JSON strings, where \u003c is the same character: nothing can end the element
    spec_json = json.dumps(specs, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(page_title)}</title>
<style>{CSS}</style>
<script>{PROBE_JS}</script>
<script>{vega_bundle()}</script>
</head><body><main>
{_header(header, toc)}
{"".join(body)}
<footer>Generated by sbif_dsl. Self-contained: charts are drawn by the inlined Vega/Vega-Lite/vega-embed
libraries, no network needed. Hover a mark for exact values; drag or scroll on a line chart to zoom the step
axis, double-click to reset.</footer>
</main>
<pre id="sbif-render-status" hidden></pre>
<script type="application/json" id="sbif-specs">{spec_json}</script>
<script>{EMBED_JS}</script>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path

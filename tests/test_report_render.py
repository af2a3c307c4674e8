"""Report charts and HTML: spec-level checks (fast, no browser) and a headless-Chromium render check.

The browser tests skip when Chromium is absent, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import altair as alt
import polars as pl
import pytest

from sbif_dsl.report import (
    DetectParams,
    Html,
    Section,
    build_report,
    class_loss_chart,
    detect_events,
    detect_transitions,
    heatmap_grid,
    heatmap_slider,
    induction_chart,
    influence_chart,
    llc_chart,
    loss_chart,
    pairs_frame,
    render_report,
    section_chart,
    transitions_table,
)
from sbif_dsl.report.charts import step_ticks
from tests import browser

from .synthetic_views import demo_frames

PAIRS = [("dog", "cat"), ("dog", "sparrow"), ("dog", "lily")]


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return demo_frames(seed=0)


def _texts(spec) -> str:
    """All title/subtitle text of a Vega-Lite spec (nested charts included)."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("title", "subtitle"):
                    out.append(json.dumps(v, ensure_ascii=False))
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return " ".join(out)


def user_sections(f: dict[str, pl.DataFrame]) -> list[Section]:
    cl = f["class_loss"]
    final = cl.filter(pl.col("step") == cl["step"].max())
    cb = f["class_bif"].filter(pl.col("step") == 3000)
    return [
        Section("User line", section_chart(f["llc"], "line", {"x": "step", "y": "llc", "color": "chain:N"}, "LLC")),
        Section("User bar", section_chart(final, "bar", {"x": "class", "y": "loss"}, "final loss per class")),
        Section(
            "User heatmap",
            section_chart(cb, "heatmap", {"x": "target_class", "y": "source_class", "color": "bif_corr"}, "class"),
        ),
        Section("User table", section_chart(f["llc_summary"], "table", {"columns": ["step", "llc_mean"]})),
    ]


# ------------------------------------------------------------------------------------- spec-level checks


def test_every_influence_chart_states_the_sign_convention(frames):
    f = frames
    ev = detect_events(f["training_curve"], f["llc_summary"], pairs_frame(f["bif"], pairs=PAIRS))
    charts = [
        influence_chart(f["bif"], pairs=PAIRS, events=ev),
        influence_chart(f["bif"], value="bif_cov", pairs=PAIRS),
        influence_chart(f["class_bif"], pairs=[("induction", "induction")]),
        heatmap_grid(f["bif"]),
        heatmap_grid(f["class_bif"], [0, 3000]),
        heatmap_slider(f["bif"]),
        section_chart(f["class_bif"], "heatmap", {"x": "target_class", "y": "source_class", "color": "bif_cov"}),
    ]
    for c in charts:
        text = _texts(c.to_dict())
        assert "−Cov" in text and "negative = helpful" in text, text[:300]


def test_step_axes_are_logarithmic_with_readable_ticks(frames):
    spec = loss_chart(frames["training_curve"]).to_dict()
    x = spec["layer"][0]["encoding"]["x"]
    assert x["scale"]["type"] == "symlog" and x["scale"]["constant"] == 1
    assert x["axis"]["values"][:4] == [0, 1, 2, 5] and x["axis"]["values"][-1] == 2000
    assert step_ticks(3000) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]


def test_heatmap_colour_is_diverging_and_centred_at_zero(frames):
    spec = heatmap_grid(frames["bif"], [0, 208, 3000]).to_dict()
    scale = spec["vconcat"][0]["hconcat"][0]["encoding"]["color"]["scale"]
    assert scale["domainMid"] == 0 and scale["domain"][0] == -scale["domain"][1]
    assert 0.3 < scale["domain"][1] < 1  # off-diagonal max, not the −1 self-variance diagonal
    with pytest.raises(ValueError, match="not checkpoints"):
        heatmap_grid(frames["bif"], [7])


def test_charts_validate_and_tooltips_carry_exact_values(frames):
    f = frames
    tr = detect_transitions(f["training_curve"], f["llc_summary"], None)
    for c in (
        loss_chart(f["training_curve"], transitions=tr),
        llc_chart(f["llc_summary"], transitions=tr),
        induction_chart(f["induction_score"], transitions=tr),
        class_loss_chart(f["class_loss"]),
    ):
        spec = c.to_dict()  # validates against the Vega-Lite schema
        assert '"tooltip"' in json.dumps(spec)
    band = llc_chart(f["llc_summary"]).to_dict()["layer"][0]
    assert band["mark"]["type"] == "area" and band["encoding"]["y2"]["field"] == "hi"


def test_section_chart_checks_columns_and_tables_escape_html():
    df = pl.DataFrame({"step": [1, 2], "name": ["<script>alert(1)</script>", "b & c"]})
    with pytest.raises(ValueError, match="not in the frame"):
        section_chart(df, "line", {"x": "step", "y": "missing"})
    with pytest.raises(ValueError, match="line, heatmap, bar or table"):
        section_chart(df, "pie", {"x": "step"})  # type: ignore[arg-type]
    table = section_chart(df, "table", {})
    assert isinstance(table, Html)
    assert "<script>" not in table and "&lt;script&gt;" in table and "b &amp; c" in table


def test_transitions_table_lists_items_one_per_line(frames):
    tr = detect_transitions(frames["training_curve"], frames["llc_summary"], None)
    html = transitions_table(tr)
    assert html.count("<tr>") == tr.height + 1
    assert "what changed" in html and "<br>" in html


def test_report_file_is_self_contained_with_unique_chart_ids(tmp_path, frames):
    path = build_report(tmp_path / "r.html", frames, extra_sections=user_sections(frames))
    doc = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", doc), "scripts must be inline"
    assert not re.search(r"<link[^>]+href=\"?https?:", doc), "no external stylesheets"
    assert "window.vegaEmbed" in doc  # the bundle is inlined
    ids = re.findall(r'<div class="chart" id="([^"]+)" data-sbif-chart>', doc)
    assert len(ids) == len(set(ids)) >= 12
    specs = json.loads(re.search(r'<script type="application/json" id="sbif-specs">(.*?)</script>', doc, re.S)[1])
    assert sorted(specs) == sorted(ids)
    assert "<details><summary>Spec (YAML)</summary>" in doc and "Stage timings" in doc
    assert "negative = helpful" in doc.lower() or "Negative = helpful" in doc


def test_script_breakout_in_data_is_neutralized(tmp_path):
    evil = "</script><script>window.pwned=1</script>"
    df = pl.DataFrame({"step": [0, 1, 10], "value": [1.0, 2.0, 3.0], "label": [evil] * 3})
    chart = section_chart(df, "line", {"x": "step", "y": "value", "color": "label"}, evil)
    path = render_report(tmp_path / "x.html", header={"study": evil}, sections=[Section(evil, [chart, df, evil])])
    doc = path.read_text(encoding="utf-8")
    assert evil not in doc  # JSON carries "<\/script>", HTML text carries "&lt;/script&gt;"
    assert doc.count("</script>") == doc.count("<script")  # no extra element ends


# --------------------------------------------------------------------------------------- browser checks


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser.require_chromium()


def test_full_report_renders_every_chart_without_errors(chromium, tmp_path, frames):
    extra = user_sections(frames)
    path = build_report(tmp_path / "report.html", frames, params=DetectParams(), extra_sections=extra)
    expected = len(re.findall(r"data-sbif-chart>", path.read_text(encoding="utf-8")))
    shot = tmp_path / "report.png"
    r = browser.render(path, screenshot=shot, chromium=chromium)
    assert r.errors == []
    assert r.warnings == []  # e.g. Vega's "Infinite extent" for an empty field would land here
    assert r.charts == expected == 12
    assert r.rendered == r.charts, f"not rendered: {r.missing}"
    assert r.page_done and r.page_status == {"expected": expected, "rendered": expected}
    assert r.ok
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    assert r.height > 3000  # the screenshot covers the whole page, not one viewport


def test_negative_control_broken_chart_spec_is_caught(chromium, tmp_path, frames):
    good = loss_chart(frames["training_curve"])
    broken = {
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "data": {"values": [{"a": 1}]},
        "mark": "point",
        "encoding": {"x": {"field": "a", "type": "quantitative"}},
        "transform": [{"calculate": "no_such_function(datum.a)", "as": "b"}],
    }
    path = render_report(tmp_path / "broken.html", header={"study": "t"}, sections=[Section("s", [good, broken])])
    r = browser.render(path, chromium=chromium)
    assert r.charts == 2
    assert r.rendered == 1 and r.missing == ["sbif-chart-2"]
    assert any("no_such_function" in e for e in r.errors), r.errors
    assert not r.ok


def test_negative_control_plain_page_js_errors_are_caught(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body>"
        '<div class="vega-embed" id="c1"></div>'
        "<script>console.error('custom console error');</script>"
        "<script>setTimeout(function () { undefinedFunction(); }, 50);</script>"
        "<script>this is not javascript</script>"
        "</body></html>",
        encoding="utf-8",
    )
    r = browser.render(page, chromium=chromium)
    joined = "\n".join(r.errors)
    assert "custom console error" in joined
    assert "undefinedFunction" in joined
    assert "SyntaxError" in joined
    assert r.charts == 1 and r.rendered == 0 and not r.ok


def test_missing_chromium_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required under CI"):
        browser.require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        browser.require_chromium()


def test_html_section_content_types(tmp_path):
    c = alt.Chart(pl.DataFrame({"a": [1, 2]})).mark_bar().encode(x="a:Q")
    df = pl.DataFrame({"x": [1.5, None], "y": ["u", "v"]})
    path = render_report(
        tmp_path / "t.html",
        header={"study": "s", "versions": {"torch": "2.13.0"}, "content_keys": {"train": "ab" * 32}},
        sections=[
            Section("one", c),
            Section("many", [c.to_dict(), Html("<p id=raw>raw</p>"), df, "plain <b>"]),
        ],
    )
    doc = Path(path).read_text(encoding="utf-8")
    assert doc.count("data-sbif-chart>") == 2 and "<p id=raw>raw</p>" in doc and "plain &lt;b&gt;" in doc
    assert "torch version" in doc and "Content keys" in doc
    with pytest.raises(TypeError, match="cannot render"):
        render_report(tmp_path / "u.html", header={}, sections=[Section("bad", [object()])])  # type: ignore[list-item]

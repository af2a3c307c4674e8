"""The report shows the uncertainty: 95% bands, significant vs not-significant events, the BIF-vs-LOO section.

Significance rules (sbif_dsl/report/significance.py) are checked on synthetic curves whose answer is known by
construction; the charts at the spec level; the whole report in headless Chromium (every chart rendered, no
JS error, the checkpoint slider of the validation scatter actually moves it).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sbif_dsl.report import (
    DetectParams,
    Section,
    agreement_chart,
    build_report,
    detect_events,
    detect_transitions,
    flip_significance,
    influence_chart,
    interval_sign,
    llc_chart,
    pairs_frame,
    peak_significance,
    peaks,
    standard_sections,
    transitions_table,
    validation_section,
    zero_crossings,
)
from tests import browser

from .synthetic_views import demo_frames

PAIRS = [("dog", "cat"), ("dog", "sparrow"), ("dog", "lily")]


def curve(y: np.ndarray, half: np.ndarray | float, *, x: np.ndarray | None = None) -> pl.DataFrame:
    """One influence curve (step, value, lo, hi) with interval half-widths `half`."""
    y = np.asarray(y, dtype=float)
    half = np.broadcast_to(np.asarray(half, dtype=float), y.shape)
    x = np.arange(y.size, dtype=float) if x is None else x
    return pl.DataFrame({"step": x, "value": y, "lo": y - half, "hi": y + half})


def flips_of(df: pl.DataFrame, **kw) -> pl.DataFrame:
    return flip_significance(df, zero_crossings(df), **kw)


def peaks_of(df: pl.DataFrame, use_abs: bool = True) -> pl.DataFrame:
    return peak_significance(df, peaks(df, use_abs=use_abs), use_abs=use_abs)


# ------------------------------------------------------------------------------------------ sign flips


def test_interval_sign():
    assert interval_sign(np.array([0.1, -0.3, -0.1, np.nan]), np.array([0.3, -0.1, 0.1, 0.2])).tolist() == [
        1,
        -1,
        0,
        0,
    ]


def test_clean_flip_with_tight_intervals_is_significant():
    y = np.where(np.arange(40) < 20, -0.5, 0.5)
    fl = flips_of(curve(y, 0.1))
    assert fl["direction"].to_list() == ["up"] and fl["significant"].to_list() == [True]
    assert (
        fl["significance"][0].startswith("significant: 95% intervals below 0 at steps")
        and "above 0" in fl["significance"][0]
    )


def test_flip_whose_new_side_is_not_resolved_is_not_significant():
    # the curve flips clearly, but after the flip every interval straddles 0
    y = np.where(np.arange(40) < 20, -0.5, 0.5)
    half = np.where(np.arange(40) < 20, 0.1, 0.8)
    fl = flips_of(curve(y, half))
    assert fl.height == 1 and fl["significant"].to_list() == [False]
    assert "above 0 after the flip" in fl["significance"][0] and "before" not in fl["significance"][0]


def test_flip_needs_min_run_consecutive_resolved_checkpoints():
    # after the flip only ONE checkpoint's interval is above 0 (the others straddle it)
    x = np.arange(40)
    y = np.where(x < 20, -0.5, 0.5)
    half = np.where(x < 20, 0.1, 0.8)
    half[25] = 0.1
    df = curve(y, half)
    assert flips_of(df, min_run=2)["significant"].to_list() == [False]
    assert flips_of(df, min_run=1)["significant"].to_list() == [True]
    half[26] = 0.1  # two in a row
    assert flips_of(curve(y, half), min_run=2)["significant"].to_list() == [True]


def test_a_side_ends_at_the_neighbouring_flip():
    # regimes: − (resolved) | + (unresolved) | − (unresolved) | + (resolved). The last flip's "before" side is
    # the third regime only: the resolved − of the first regime, two flips back, must not vouch for it.
    x = np.arange(60)
    y = np.select([x < 15, x < 30, x < 45], [-0.5, 0.5, -0.5], 0.5)
    half = np.where((x < 15) | (x >= 45), 0.1, 0.8)
    fl = flips_of(curve(y, half))
    assert fl["direction"].to_list() == ["up", "down", "up"]
    assert fl["significant"].to_list() == [False, False, False]


def test_flip_significance_per_group_and_without_intervals():
    x = np.arange(40.0)
    a = curve(np.where(x < 20, -0.5, 0.5), 0.1).with_columns(source=pl.lit("a"), target=pl.lit("b"))
    b = curve(np.where(x < 20, 0.5, -0.5), 0.8).with_columns(source=pl.lit("a"), target=pl.lit("c"))
    both = pl.concat([a, b])
    fl = flip_significance(both, zero_crossings(both, by=["source", "target"]), ["source", "target"])
    assert dict(zip(fl["target"], fl["significant"], strict=True)) == {"b": True, "c": False}
    bare = both.drop("lo", "hi")  # an older cache: no intervals, so unknown (null), not False
    fl = flip_significance(bare, zero_crossings(bare, by=["source", "target"]), ["source", "target"])
    assert fl["significant"].to_list() == [None, None]
    nulls = both.with_columns(lo=pl.lit(None, pl.Float64), hi=pl.lit(None, pl.Float64))
    fl = flip_significance(nulls, zero_crossings(nulls, by=["source", "target"]), ["source", "target"])
    assert fl["significant"].to_list() == [None, None] and "no 95% intervals" in fl["significance"][0]


# ------------------------------------------------------------------------------------------------ peaks


def bump(height: float = 0.6, base: float = 0.05, n: int = 60, at: int = 30) -> np.ndarray:
    x = np.arange(n, dtype=float)
    return base + height * np.exp(-0.5 * ((x - at) / 3) ** 2)


def test_tight_peak_is_significant_and_reports_its_valleys():
    pk = peaks_of(curve(bump(), 0.05))
    assert pk["step"].to_list() == [30] and pk["significant"].to_list() == [True]
    assert pk["step_left_base"][0] < 30 < pk["step_right_base"][0]
    assert "clears 0 and the valleys' intervals" in pk["significance"][0]


def test_peak_whose_interval_includes_zero_is_not_significant():
    pk = peaks_of(curve(bump(), 0.7))
    assert pk.height == 1 and pk["significant"].to_list() == [False]
    assert "includes 0" in pk["significance"][0]


def test_peak_clear_of_zero_but_not_of_its_valley_is_not_significant():
    # the peak (0.65 ± 0.32) is clearly positive, but its interval reaches down into the valleys' (0.05 ± 0.32)
    pk = peaks_of(curve(bump(), 0.32))
    assert pk.height == 1 and pk["significant"].to_list() == [False]
    assert "not clear of the valley" in pk["significance"][0]


def test_helpful_peak_uses_the_absolute_scale():
    pk = peaks_of(curve(-bump(), 0.05))
    assert pk["value"][0] < 0 and pk["significant"].to_list() == [True]
    # without use_abs a dip is no peak of the signed curve; a positive bump still is, valleys compared as is
    assert peaks_of(curve(-bump(), 0.05), use_abs=False).is_empty()
    assert peaks_of(curve(bump(), 0.05), use_abs=False)["significant"].to_list() == [True]


# ------------------------------------------------------------------------------- study-level detection


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return demo_frames(seed=0, intervals=True, loo=True)


def test_pairs_frame_carries_the_interval_of_the_chosen_value(frames):
    pf = pairs_frame(frames["bif"], "bif_corr", PAIRS)
    assert pf.columns[-3:] == ["value", "lo", "hi"]
    assert (pf["lo"] <= pf["value"]).all() and (pf["value"] <= pf["hi"]).all()
    cov = pairs_frame(frames["bif"], "bif_cov", PAIRS)
    want = frames["bif"].join(cov.select("step", "source", "target"), on=["step", "source", "target"])
    assert cov["hi"].to_list() == want.sort("source", "target", "step")["bif_cov_hi"].to_list()
    assert "lo" not in pairs_frame(demo_frames(seed=0)["bif"], pairs=PAIRS).columns


def test_demo_study_known_significance(frames):
    """demo_frames(intervals=True): dog→lily's peak has wide intervals by construction, the flips tight ones."""
    ev = detect_events(frames["training_curve"], frames["llc_summary"], pairs_frame(frames["bif"], pairs=PAIRS))
    bif_ev = ev.filter(pl.col("kind").is_in(["bif_sign_flip", "bif_peak"]))
    got = {(r["series"], r["kind"]): r["significant"] for r in bif_ev.iter_rows(named=True)}
    assert got == {
        ("dog→lily", "bif_peak"): False,
        ("dog→sparrow", "bif_sign_flip"): True,
        ("dog→cat", "bif_sign_flip"): True,
    }
    assert ev.filter(pl.col("kind").is_in(["loss_drop", "llc_change"]))["significant"].is_null().all()


def test_intervals_leave_detection_unchanged(frames):
    old = demo_frames(seed=0)
    cols = ["step_start", "step_end", "step", "value", "kind", "series", "what", "evidence"]
    a = detect_events(old["training_curve"], old["llc_summary"], pairs_frame(old["bif"], pairs=PAIRS))
    b = detect_events(frames["training_curve"], frames["llc_summary"], pairs_frame(frames["bif"], pairs=PAIRS))
    assert a.select(cols).equals(b.select(cols))
    assert a["significant"].is_null().all()
    ta = detect_transitions(old["training_curve"], old["llc_summary"], pairs_frame(old["bif"], pairs=PAIRS))
    tb = detect_transitions(frames["training_curve"], frames["llc_summary"], pairs_frame(frames["bif"], pairs=PAIRS))
    assert ta.drop("significance").equals(tb.drop("significance"))


def test_transitions_say_which_events_are_significant(frames):
    tr = detect_transitions(frames["training_curve"], frames["llc_summary"], pairs_frame(frames["bif"], pairs=PAIRS))
    assert tr["significance"].to_list() == [
        "dog→lily harmful |BIF| peak: not significant",
        "dog→sparrow turns harmful (− → +): significant",
        "dog→cat turns harmful (− → +): significant",
    ]
    html = transitions_table(tr)
    assert "significant? (95% intervals)" in html and "not significant" in html
    many = detect_transitions(None, None, frames["bif"])  # all pairs: summarized groups get counts
    assert any("pairs significant" in s for s in many["significance"].drop_nulls())
    old = demo_frames(seed=0)
    tr_old = detect_transitions(old["training_curve"], old["llc_summary"], None)  # no BIF events: no column
    assert tr_old["significance"].is_null().all() and "significant?" not in transitions_table(tr_old)


# ---------------------------------------------------------------------------------------- chart specs


def _layers(spec: dict) -> list[dict]:
    return spec.get("layer", [])


def test_influence_chart_draws_bands_under_lines_and_hollow_non_significant_marks(frames):
    ev = detect_events(None, None, pairs_frame(frames["bif"], pairs=PAIRS))
    spec = influence_chart(frames["bif"], pairs=PAIRS, events=ev).to_dict()
    marks = [(ly["mark"]["type"] if isinstance(ly["mark"], dict) else ly["mark"]) for ly in _layers(spec)]
    area = marks.index("area")
    assert area < marks.index("line")  # the band lies under the line
    enc = _layers(spec)[area]["encoding"]
    assert enc["y"]["field"] == "lo" and enc["y2"]["field"] == "hi"
    points = [ly for ly in _layers(spec) if ly["mark"]["type"] == "point"]
    assert sorted(p["mark"]["filled"] for p in points) == [False, True]  # significant filled, the lily peak not
    text = json.dumps(spec, ensure_ascii=False)
    assert "hollow: not" in text and "95% interval" in text
    # an older cache (no _lo/_hi): no band, marks as before
    old = demo_frames(seed=0)
    ev_old = detect_events(None, None, pairs_frame(old["bif"], pairs=PAIRS))
    spec_old = influence_chart(old["bif"], pairs=PAIRS, events=ev_old).to_dict()
    assert all(ly["mark"]["type"] != "area" for ly in _layers(spec_old))
    assert [ly["mark"]["filled"] for ly in _layers(spec_old) if ly["mark"]["type"] == "point"] == [True]
    assert "hollow" not in json.dumps(spec_old, ensure_ascii=False)


def test_class_influence_and_llc_bands(frames):
    spec = influence_chart(frames["class_bif"], pairs=[("induction", "induction")]).to_dict()
    assert any(ly["mark"]["type"] == "area" for ly in _layers(spec))
    llc = llc_chart(frames["llc_summary"]).to_dict()
    areas = [ly["encoding"] for ly in _layers(llc) if ly["mark"]["type"] == "area"]
    assert [a["y"]["field"] for a in areas] == ["lo", "llc_lo"] and areas[1]["y2"]["field"] == "llc_hi"
    assert "95% interval" in json.dumps(llc, ensure_ascii=False)
    old = llc_chart(demo_frames(seed=0)["llc_summary"]).to_dict()
    assert [ly["encoding"]["y"]["field"] for ly in _layers(old) if ly["mark"]["type"] == "area"] == ["lo"]


def test_agreement_chart_has_a_checkpoint_slider_and_the_curve(frames):
    name = "agreement"
    pairs = frames["agreement_pairs"].filter(pl.col("analysis") == name)
    stats = frames["agreement"].filter(pl.col("analysis") == name)
    spec = agreement_chart(pairs, stats).to_dict()  # validates against the Vega-Lite schema
    (param,) = spec["params"]
    n_steps = pairs["step"].n_unique()
    assert param["name"] == "ckpt" and param["bind"]["input"] == "range"
    assert param["bind"]["max"] == n_steps - 1 and param["value"] == n_steps - 1
    text = json.dumps(spec, ensure_ascii=False)
    assert text.count("datum.ckpt == ckpt") >= 3  # label, scatter, the rule on the curve
    assert '"symlog"' in text  # the agreement curve has the log-step axis
    for metric in ("Pearson r", "Spearman ρ", "sign agreement"):
        assert metric in text
    with pytest.raises(ValueError, match="lack column"):
        agreement_chart(pairs.drop("loo"))


def test_validation_section(frames):
    assert validation_section(None, None, None) is None
    only_loo = validation_section(None, None, frames["loo"])
    assert only_loo is not None and "no `agreement` analysis" in str(only_loo.items[0])
    sec = validation_section(frames["agreement"], frames["agreement_pairs"], frames["loo"])
    charts = [i for i in sec.items if hasattr(i, "to_dict")]
    tables = [i for i in sec.items if isinstance(i, str) and "<table" in i]
    assert len(charts) == len(tables) == 2  # one per agreement analysis: agreement, agreement_cumulative
    assert "agreement_cumulative" in "".join(str(i) for i in sec.items)
    assert "Pearson r" in tables[0] and "0.7061" in tables[0]  # the pooled numbers
    titles = [s.title for s in standard_sections(frames, params=DetectParams(), pairs=PAIRS)]
    assert "Validation: BIF vs leave-one-out" in titles
    assert "Validation: BIF vs leave-one-out" not in [s.title for s in standard_sections(demo_frames(seed=0))]


# --------------------------------------------------------------------------------------- browser checks


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser.require_chromium()


def test_report_with_uncertainty_renders_in_chromium(chromium, tmp_path, frames):
    path = build_report(tmp_path / "u.html", frames, params=DetectParams(), pairs=PAIRS)
    doc = path.read_text(encoding="utf-8")
    expected = len(re.findall(r"data-sbif-chart>", doc))
    assert expected == 11  # the 9 standard charts + one validation chart per agreement analysis
    shot = tmp_path / "u.png"
    r = browser.render(path, screenshot=shot, chromium=chromium)
    assert r.errors == [] and r.warnings == []
    assert r.charts == r.rendered == expected, r.missing
    assert shot.stat().st_size > 50_000
    assert "significant? (95% intervals)" in doc and "Validation: BIF vs leave-one-out" in doc


def test_validation_slider_moves_the_scatter(chromium, tmp_path, frames):
    """Drag the slider (set it, fire `input`): the scatter's label must name the chosen checkpoint."""
    sec = validation_section(frames["agreement"], frames["agreement_pairs"])
    chart = next(i for i in sec.items if hasattr(i, "to_dict"))
    from sbif_dsl.report import render_report

    path = render_report(tmp_path / "v.html", header={"study": "v"}, sections=[Section("v", chart)])
    steps = sorted(frames["agreement_pairs"]["step"].unique().to_list())
    probe = """<script>(function poll() {
      if (!document.body.dataset.renderDone) { setTimeout(poll, 50); return; }
      var read = function () { return Array.prototype.map.call(document.querySelectorAll('svg text'),
        function (t) { return t.textContent; }).filter(function (t) { return t.indexOf('checkpoint step') === 0; }); };
      var before = read(), el = document.querySelector('input[type=range]');
      el.value = 10; el.dispatchEvent(new Event('input', {bubbles: true}));
      setTimeout(function () {
        var pre = document.createElement('pre'); pre.id = 'slider-check';
        pre.textContent = JSON.stringify({before: before, after: read()}); document.body.appendChild(pre);
      }, 300);
    })();</script>"""
    src = path.read_text(encoding="utf-8")
    at = src.rindex("</body>")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(src[:at] + probe + src[at:], encoding="utf-8")
        cmd = [chromium, *browser.FLAGS, f"--user-data-dir={Path(tmp) / 'p'}", "--virtual-time-budget=20000"]
        dom = subprocess.run([*cmd, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180).stdout
    m = re.search(r'<pre id="slider-check">(.*?)</pre>', dom, re.S)
    assert m, "the slider probe did not report"
    got = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert got["before"][0].startswith(f"checkpoint step {steps[-1]:,}")
    assert got["after"][0].startswith(f"checkpoint step {steps[10]:,}")

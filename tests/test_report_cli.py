"""`sbif report` end to end: real run, real DuckDB, real HTML opened in headless Chromium."""

from __future__ import annotations

from .browser import render, require_chromium
from .conftest import TINY_SPEC, sbif, write_spec

SECTIONS = """\
report:
  title: Tiny report
  pairs: [[item0, item1], [item0, item2]]
  sections:
    - title: LLC per chain
      sql: SELECT step, chain::VARCHAR AS chain, llc FROM llc WHERE study = 'tiny'
      chart: line
      x: step
      y: llc
      color: chain
    - title: Final influence
      sql: SELECT source, target, bif_corr FROM bif WHERE study = 'tiny' AND analysis = 'bif' AND step = 60
      chart: heatmap
      x: target
      y: source
      color: bif_corr
    - title: Checkpoints
      sql: SELECT * FROM checkpoints WHERE study = 'tiny'
"""


def test_report_renders_in_browser(tmp_path, cache_path):
    require_chromium()
    spec = write_spec(tmp_path, TINY_SPEC + SECTIONS)
    missing = sbif("report", str(spec), "-o", str(tmp_path / "r.html"), cache=cache_path, check=False)
    assert missing.returncode == 1 and "not in the cache" in missing.stderr and "sbif run" in missing.stderr
    assert not (tmp_path / "r.html").exists()

    sbif("run", str(spec), cache=cache_path)
    out = tmp_path / "r.html"
    proc = sbif("report", str(spec), "-o", str(out), cache=cache_path)
    assert "wrote" in proc.stdout
    text = out.read_text()
    assert "<script src=" not in text and "https://cdn" not in text  # self-contained, opens offline
    for needle in ("Tiny report", "LLC per chain", "Final influence", "negative = helpful"):
        assert needle in text
    result = render(out, screenshot=tmp_path / "r.png")
    assert result.errors == [], result.errors
    assert result.charts >= 6 and result.rendered == result.charts, result.missing
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_report_section_validation(tmp_path):
    bad_sql = write_spec(tmp_path, TINY_SPEC + SECTIONS.replace("FROM llc WHERE", "FROM llcs WHERE"), "a.yaml")
    proc = sbif("validate", str(bad_sql), check=False)
    assert proc.returncode == 2 and "a.yaml:" in proc.stderr and "report.sections.0.sql" in proc.stderr
    assert "llcs" in proc.stderr
    bad_col = write_spec(tmp_path, TINY_SPEC + SECTIONS.replace("      y: llc\n", "      y: lcc\n"), "b.yaml")
    proc = sbif("validate", str(bad_col), check=False)
    assert proc.returncode == 2 and "report.sections.0.y: no column 'lcc'" in proc.stderr
    bad_chart = write_spec(tmp_path, TINY_SPEC + SECTIONS.replace("chart: heatmap", "chart: pie"), "c.yaml")
    proc = sbif("validate", str(bad_chart), check=False)
    assert proc.returncode == 2 and "report.sections.1.chart" in proc.stderr


def test_report_changes_recompute_nothing(tmp_path, tiny_spec, cache_path):
    sbif("run", str(tiny_spec), cache=cache_path)
    edited = write_spec(tmp_path, TINY_SPEC + SECTIONS, "edited.yaml")
    assert "nothing to compute" in sbif("run", str(edited), cache=cache_path).stdout


VALIDATION = """\
  - kind: loo
  - kind: agreement
    bif: bif
    loo: loo
report:
  pairs: [[item0, item1], [item0, item2]]
"""


def test_report_shows_intervals_significance_and_validation(tmp_path, cache_path):
    """A real run with 95% intervals and a LOO ground truth: bands, the significance column and the BIF-vs-LOO
    section reach the HTML, and every chart renders in Chromium."""
    require_chromium()
    spec = write_spec(tmp_path, TINY_SPEC + VALIDATION)
    sbif("run", str(spec), cache=cache_path)
    out = tmp_path / "v.html"
    sbif("report", str(spec), "-o", str(out), cache=cache_path)
    text = out.read_text()
    assert "Validation: BIF vs leave-one-out" in text and "Pooled over all pairs and checkpoints" in text
    assert '"field":"lo"' in text and '"field":"llc_lo"' in text  # the influence and LLC bands
    assert "95% interval" in text
    # the tiny study's 3 x 20 draws fail the screens: the strip says so
    assert "Convergence screens" in text and "checkpoints flagged" in text and '"field":"verdict"' in text
    assert "fails its convergence screens" in text  # its values are crossed out in the influence chart
    result = render(out)
    assert result.errors == [] and result.warnings == [], (result.errors, result.warnings)
    assert result.charts >= 6 and result.rendered == result.charts, result.missing

"""Sweeps: a `sweep:` block turns one spec into a grid of cells (studies) that share every stage whose key their
values leave unchanged. Real runs through the CLI and the Python API on the tiny study."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings

import sbif_dsl as sb

from .browser import render, require_chromium
from .conftest import TINY_SPEC, sbif, write_spec
from .hostile_corpus import mutated, write

GRID = """
sweep:
  grid:
    sampler.gamma: [1000, 3000]
    sampler.eps: [1.0e-4, 5.0e-5]
"""
BASE = TINY_SPEC.replace("name: tiny", "name: grid")


def sweep_spec(tmp_path, sweep: str = GRID, base: str = BASE, name: str = "sweep.yaml"):
    return write_spec(tmp_path, base + sweep, name=name)


def registry(cache) -> dict[str, int]:
    with duckdb.connect(str(cache), read_only=True) as con:
        return dict(con.execute("SELECT kind, count(*) FROM stage_registry GROUP BY kind").fetchall())


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The 2 × 2 sweep planned and run once through the CLI: (spec, cache, plan output, run output). Tests that
    write copy the cache (`copied`)."""
    tmp = tmp_path_factory.mktemp("swept")
    spec, cache = sweep_spec(tmp), tmp / "cache" / "sbif.duckdb"
    plan = sbif("plan", str(spec), cache=cache).stdout
    return spec, cache, plan, sbif("run", str(spec), cache=cache).stdout


def copied(cache, tmp_path):
    """A private copy of a cache folder (the DuckDB file and its objects folder)."""
    shutil.copytree(cache.parent, tmp_path / "copy")
    return tmp_path / "copy" / cache.name


def test_cells_share_training_and_run_through_the_cli(swept, tmp_path):
    spec, cache_path, plan, out = swept
    assert "4 cells, each valid" in sbif("validate", str(spec)).stdout
    assert re.search(r"cell 0  grid\[gamma=1000,eps=0\.0001\]: 19 stages \(4 shared with other cells\)", plan), plan
    assert "4 cells: 64 distinct stages of 76 in the cells; 4 shared by every cell (3 checkpoint, 1 dataset)" in plan
    assert "ran 64 stages of 4 cells" in out, out
    kinds = registry(cache_path)
    assert kinds["checkpoint"] == 3 and kinds["dataset"] == 1  # trained once for all four cells
    assert kinds["sample"] == 4 * 3 and kinds["bif"] == 4 * 3 * 2
    cells = sb.connect(cache_path).sql("SELECT * FROM sweep ORDER BY cell, position")
    assert cells["study"].unique(maintain_order=True).to_list() == [
        "grid[gamma=1000,eps=0.0001]",
        "grid[gamma=1000,eps=5e-5]",
        "grid[gamma=3000,eps=0.0001]",
        "grid[gamma=3000,eps=5e-5]",
    ]
    assert cells.filter(pl.col("axis") == "gamma")["value_num"].to_list() == [1000.0, 1000.0, 3000.0, 3000.0]
    # joinable with every result view: the LLC of each cell at the last checkpoint, by axis value
    llc = sb.connect(cache_path).sql(
        "SELECT g.value_num AS gamma, e.value_num AS eps, l.llc_mean FROM llc_summary l "
        "JOIN sweep g ON g.study = l.study AND g.axis = 'gamma' JOIN sweep e ON e.study = l.study AND e.axis = 'eps' "
        "WHERE l.step = 60 ORDER BY gamma, eps"
    )
    assert llc.height == 4 and llc["llc_mean"].n_unique() == 4
    again = sbif("run", str(spec), cache=cache_path).stdout
    assert "nothing to compute: all 64 stages of 4 cells cached" in again, again
    report = sbif("report", str(spec), "-o", str(tmp_path / "sweep.html"), cache=cache_path)
    html = (tmp_path / "sweep.html").read_text()
    assert "wrote" in report.stdout and "Do the sign flips survive?" in html and "LLC across the sweep" in html
    assert "grid[gamma=3000,eps=5e-5]" in html
    require_chromium()
    shown = render(tmp_path / "sweep.html")
    assert shown.errors == [] and shown.charts >= 3 and shown.rendered == shown.charts, shown.missing


def test_a_cell_equals_the_single_study_with_its_overrides(swept, tmp_path):
    cache_path = swept[1]
    alone = tmp_path / "alone" / "sbif.duckdb"
    single = write_spec(tmp_path, BASE, name="single.yaml")
    sbif("run", str(single), "--set", "sampler.gamma=3000", "--set", "sampler.eps=5e-5", cache=alone)
    cols = "step, analysis, source, target, bif_cov, bif_corr, bif_corr_se, bif_corr_lo, bif_corr_hi"
    order = " ORDER BY analysis, step, source_idx, target_idx"
    cell = sb.connect(cache_path).sql(f"SELECT {cols} FROM bif WHERE study = 'grid[gamma=3000,eps=5e-5]'{order}")
    ref = sb.connect(alone).sql(f"SELECT {cols} FROM bif WHERE study = 'grid'{order}")
    assert cell.height == ref.height > 0 and cell.equals(ref)  # bitwise
    keys = "SELECT key FROM stages WHERE study = ? ORDER BY key"
    assert sb.connect(cache_path).sql(keys, ["grid[gamma=3000,eps=5e-5]"]).equals(sb.connect(alone).sql(keys, ["grid"]))


def test_adding_a_value_computes_only_the_new_cells(swept, tmp_path):
    cache_path = copied(swept[1], tmp_path)
    wider = sweep_spec(tmp_path, GRID.replace("[1000, 3000]", "[1000, 3000, 9000]"))
    out = sbif("run", str(wider), cache=cache_path).stdout
    # two new cells (gamma 9000 × two eps): 3 checkpoints × (sample + 2 bif + llc + loss_kernel) each
    assert "ran 30 stages of 6 cells, 64 cached" in out, out
    assert registry(cache_path)["checkpoint"] == 3
    assert sb.connect(cache_path).sql("SELECT DISTINCT study FROM sweep WHERE sweep = 'grid'").height == 6


def test_zip_pairs_axes(tmp_path, cache_path):
    zipped = "\nsweep:\n  zip:\n    - {sampler.gamma: [1000, 3000], sampler.chains: [2, 4]}\n"
    sweep = sb.load(sweep_spec(tmp_path, zipped), cache=cache_path)
    assert isinstance(sweep, sb.Sweep)
    assert [c.name for c in sweep.cells] == ["grid[gamma=1000,chains=2]", "grid[gamma=3000,chains=4]"]
    assert [c.spec.study.sampler.chains for c in sweep.cells] == [2, 4]
    plan = sweep.plan()
    assert plan.columns[:2] == ["cell", "study"] and plan.columns[-1] == "shared_by"
    assert plan.filter(pl.col("kind") == "checkpoint")["shared_by"].to_list() == [2] * 6
    assert plan.filter(pl.col("kind") == "sample")["shared_by"].to_list() == [1] * 6
    result = sweep.run()
    assert isinstance(result, sb.SweepResult) and list(result.cells) == [c.name for c in sweep.cells]
    assert len(result.ran) == result.total == 4 + 2 * 15 and not result.failed
    again = sweep.run()
    assert again.ran == [] and again.cached == again.total == 34 and sweep.plan()["cached"].all()
    chains = sweep.sql("SELECT DISTINCT study, chains FROM llc_summary ORDER BY study")
    assert chains["chains"].to_list() == [2, 4]


def test_invalid_cells_are_reported_before_anything_runs(tmp_path, cache_path):
    bad = sweep_spec(tmp_path, GRID.replace("[1.0e-4, 5.0e-5]", "[1.0e-4, -5.0e-5]"))
    proc = sbif("run", str(bad), cache=cache_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "sampler.eps" in t)
    assert f"sweep.yaml:{line}: sampler.eps: Input should be greater than 0 (got -5e-05)" in proc.stderr
    assert "(sweep cells [gamma=1000,eps=-5e-5], [gamma=3000,eps=-5e-5])" in proc.stderr, proc.stderr
    assert not cache_path.exists()  # nothing ran, no cache was even created
    typo = sbif("validate", str(sweep_spec(tmp_path, GRID.replace("sampler.gamma", "sampler.gama"))), check=False)
    assert typo.returncode == 2 and "sampler.gama: unknown field; did you mean 'gamma'?" in typo.stderr


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("\nsweep:\n  grid: {}\n", "a sweep needs at least one axis"),
        ("\nsweep:\n  grid:\n    title: [a, b]\n", "'title' does not change any result"),
        ("\nsweep:\n  zip:\n    - {sampler.gamma: [1, 2], sampler.eps: [0.1]}\n", "lists of one length"),
        ("\nsweep:\n  grid: {sampler.gamma: [1, 2]}\n  zip:\n    - {sampler.gamma: [3, 4]}\n", "given twice"),
        ("\nsweep:\n  grid: {sampler.gamma: []}\n", "at least 1 item"),
        ("\nsweep:\n  grid: {sampler.gamma: [1, 1]}\n", "sampler.gamma=1 is given twice on one axis"),
        ("\nsweep:\n  grid: {a..b: [1]}\n", "expected a dotted field path"),
        ("\nsweep:\n  grid: {analyses.9.normalize: [pearson]}\n", "analyses.9 does not exist"),
        ("\nsweep:\n  grid: {seed.x: [1]}\n", "seed holds 3, not a mapping or a list"),
        ("\nsweep:\n  grid: {sampler.gamma: [.nan]}\n", "not NaN or infinity (got nan) (sweep cell [gamma=nan])"),
        ("\nsweep:\n  grid: {sampler.gamma: [1, 2]}\n  max_cells: 100000\n", "less than or equal to 10000"),
    ],
)
def test_malformed_sweeps_are_one_line_errors(tmp_path, sweep, message):
    proc = sbif("validate", str(sweep_spec(tmp_path, sweep)), check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_grid_too_large_to_be_intended_is_refused_unless_confirmed(tmp_path):
    values = ", ".join(str(1000 + i) for i in range(40))
    eps = ", ".join(f"{(i + 1) * 1e-6:.1e}" for i in range(30))
    huge = f"\nsweep:\n  grid:\n    sampler.gamma: [{values}]\n    sampler.eps: [{eps}]\n"
    proc = sbif("validate", str(sweep_spec(tmp_path, huge)), check=False)
    assert proc.returncode == 2 and "1,200 cells (40 × 30) exceeds max_cells 1,000" in proc.stderr, proc.stderr
    assert "max_cells: 1200" in proc.stderr
    ok = sbif("validate", str(sweep_spec(tmp_path, huge + "  max_cells: 1200\n")))
    assert "1200 cells, each valid" in ok.stdout


def test_an_axis_that_changes_no_result_is_refused_before_running(tmp_path, cache_path):
    same = sweep_spec(tmp_path, "\nsweep:\n  grid:\n    training.log_every: [10, 20]\n")
    proc = sbif("run", str(same), cache=cache_path, check=False)
    assert proc.returncode == 2 and "compute the same stages: training.log_every changes no result" in proc.stderr
    assert not cache_path.exists()  # nothing ran


def test_set_on_a_swept_field_is_refused(tmp_path):
    with pytest.raises(sb.SpecError, match="overlaps sweep axis 'sampler.gamma'"):
        sb.load(sweep_spec(tmp_path), overrides={"sampler.gamma": 5.0})
    assert sb.load(sweep_spec(tmp_path), overrides={"sampler.draws": 10}).cells[0].spec.study.sampler.draws == 10


@settings(max_examples=300, deadline=4000, suppress_health_check=list(HealthCheck), database=None)
@given(mutated({"sweep": BASE + GRID + "  zip:\n    - {sampler.chains: [2, 3], sampler.draws: [20, 30]}\n"}))
def test_damaged_sweep_specs_expand_or_say_why_in_one_line(case):
    """Mutated sweep specs: loading and expanding the cells returns or raises SpecError (nothing else), one line
    per problem, each naming the file."""
    from sbif_dsl.spec import load_spec
    from sbif_dsl.spec.sweep import cells

    _, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), data)
        try:
            spec = load_spec(path)
            cells(spec)
        except sb.SpecError as e:
            assert e.problems and all(p.startswith(str(path)) and "\n" not in p for p in e.problems), e.problems

"""The Python API (`import sbif_dsl as sb`): the CLI's verbs as functions, typed errors, and the documented
notebook example run as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import polars as pl
import pytest

import sbif_dsl as sb

from .conftest import REPO, TINY_SPEC, copy_cache, write_spec


def test_load_plan_run_sql_report(tmp_path, cache_path):
    study = sb.load(write_spec(tmp_path), overrides={"sampler.gamma": 2000.0}, cache=cache_path)
    assert study.spec.study.sampler.gamma == 2000.0 and study.validate() is study
    plan = study.plan()
    assert isinstance(plan, pl.DataFrame) and plan.columns == ["kind", "step", "analysis", "label", "key", "cached"]
    assert plan.height == 19 and not plan["cached"].any()
    result = study.run()
    assert len(result.ran) == 19 and result.cached == 0 and result.devices == {"cpu"}
    assert study.plan()["cached"].all() and study.run().ran == []
    bif = study.sql("SELECT step, source, target, bif_corr, bif_corr_lo FROM bif WHERE analysis = 'bif'")
    assert isinstance(bif, pl.DataFrame) and bif.height == 3 * 4 * 4
    same = sb.connect(cache_path).sql("SELECT count(*) AS n FROM bif WHERE study = ?", ["tiny"])
    assert same["n"][0] == 48 + 3 * 4 * 2
    out = study.report(tmp_path / "r.html")
    assert out.exists() and "<html" in out.read_text()[:2000].lower()
    assert "tiny" in study._repr_html_() and "ran" in result._repr_html_()
    assert "bif" in sb.views() and "diagnostics" in sb.views()


def test_the_same_stages_as_the_cli(tmp_path, cache_path):
    from .conftest import sbif

    spec = write_spec(tmp_path)
    sb.load(spec, cache=cache_path).run()
    assert "nothing to compute" in sbif("run", str(spec), cache=cache_path).stdout


def test_errors_are_typed_with_file_line_and_field(tmp_path, cache_path):
    bad = write_spec(tmp_path, TINY_SPEC.replace("chains: 3", "chains: true"), name="bad.yaml")
    with pytest.raises(sb.SpecError) as e:
        sb.load(bad, cache=cache_path)
    assert any(re.match(r".*bad\.yaml:\d+: sampler\.chains: ", p) for p in e.value.problems), e.value.problems
    with pytest.raises(sb.SpecError):
        sb.load(write_spec(tmp_path), overrides={"sampler.nope": 1})
    with pytest.raises(sb.MissingResultsError):
        sb.load(write_spec(tmp_path), cache=cache_path).report(tmp_path / "x.html")
    with pytest.raises(sb.UsageError, match="views are"):
        sb.connect(cache_path).sql("SELECT * FROM no_such_view")


def test_the_documented_notebook_example_runs_as_written(tmp_path, demo_cache):
    """docs/python_api.md's example, in a fresh interpreter, in a copy of the repo's specs/ folder, over a copy of
    the session's demo run (the run itself is tested by test_validation_toy; here every line of the example runs,
    its `study.run()` answering from the cache)."""
    text = (REPO / "docs" / "python_api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    copy_cache(demo_cache, tmp_path / "cache" / "sbif.duckdb")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "dog→cat is harmful beyond its 95% interval from step" in proc.stdout
    step = int(proc.stdout.split("from step")[1].split()[0])
    assert 300 <= step <= 600, proc.stdout  # the dog/cat transition (README: flips at ~420)
    assert (tmp_path / "reports" / "dog_cat.html").stat().st_size > 1000


def test_an_unchanged_rerun_decides_from_the_recorded_plan_without_torch(tmp_path, cache_path):
    """The second run of an unchanged spec needs no data, no model and no torch; any change re-plans."""
    from .conftest import sbif

    spec = write_spec(tmp_path)
    sbif("run", str(spec), cache=cache_path)
    code = (
        "import sys, sbif_dsl as sb\n"
        f"study = sb.load({str(spec)!r}, cache={str(cache_path)!r})\n"
        "r = study.run()\n"
        "from sbif_dsl.cli import _screen_lines, _screens\n"
        "_screen_lines(study.spec.study, _screens(study.store, [study.name]), False)\n"
        "print(len(r.ran), r.cached, study.plan()['cached'].all(), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "19", "True", "False"], out
    # a changed spec is planned again (and its new stages run), whatever was recorded
    edited = write_spec(tmp_path, TINY_SPEC.replace("gamma: 1000", "gamma: 1500"), name="edited.yaml")
    assert "ran 15 stages" in sbif("run", str(edited), cache=cache_path).stdout  # 3 samples + their analyses
    assert "nothing to compute" in sbif("run", str(edited), cache=cache_path).stdout


def test_the_recorded_plan_follows_the_files_a_spec_reads(tmp_path, cache_path):
    from sbif_dsl.plan import fingerprint

    (tmp_path / "a.txt").write_text("hello world, " * 200)
    spec = write_spec(
        tmp_path,
        "name: t\ndevice: cpu\ndata: {kind: text_files, paths: [a.txt], context: 16}\n"
        "model: {kind: transformer, n_layers: 1, n_heads: 1, d_model: 8}\n"
        "training: {steps: 2, checkpoints: {steps: [2], include_zero: false}}\n",
    )
    before = fingerprint(sb.load(spec).spec)
    (tmp_path / "a.txt").write_text("hello there, " * 200)
    assert fingerprint(sb.load(spec).spec) != before
    python_model = "  kind: python\n  factory: m:f\n"
    user = TINY_SPEC.replace("  kind: deep_linear\n  hidden: [6]\n  init_scale: 0.01\n", python_model)
    user = write_spec(tmp_path, user, "u.yaml")
    assert fingerprint(sb.load(user).spec) is None  # user code: always planned

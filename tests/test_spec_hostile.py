"""Hostile specs: whatever the bytes, one line per problem (file:line: field: what; hint), exit 2, bounded time.

The worst cases and the mutation generator live in tests/hostile_corpus.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from sbif_dsl.checks import load_checked
from sbif_dsl.errors import SpecError
from sbif_dsl.spec import load_spec
from sbif_dsl.spec.loader import MAX_BYTES, STRUCTURAL_CLASSES

from .conftest import REPO, TINY_SPEC, sbif, write_spec
from .hostile_corpus import CASES, SECTIONED, SET_CASES, TOY, mutated, write

TIME_LIMIT_S = 2.0


def _problems(path: Path, overrides=None, load=load_spec) -> tuple[list[str], float]:
    start = time.perf_counter()
    try:
        load(path, overrides)
        problems: list[str] = []
    except SpecError as e:
        problems = e.problems
    return problems, time.perf_counter() - start


def _assert_well_formed(problems: list[str], path: Path) -> None:
    where = re.compile(re.escape(str(path)) + r":(\d+|--set): ")
    for p in problems:
        assert where.match(p), p[:300]
        assert "\n" not in p and p.isprintable() and len(p) <= 2000, p[:300]


# ----------------------------------------------------------------------------- every class of bad input


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_one_clear_line(tmp_path, case):
    path = write(tmp_path, case.data)
    problems, seconds = _problems(path, load=load_checked)
    assert problems, "accepted"
    _assert_well_formed(problems, path)
    assert problems[0].startswith(f"{path}:{case.line}: "), problems[0][:300]
    assert case.expect in problems[0], problems[0][:300]
    assert seconds < TIME_LIMIT_S


@pytest.mark.parametrize("overrides, expect", SET_CASES, ids=[o[0][:24] for o, _ in SET_CASES])
def test_hostile_set_overrides(tmp_path, overrides, expect):
    path = write(tmp_path, TOY.encode())
    problems, _ = _problems(path, overrides)
    assert problems and problems[0].startswith(f"{path}:--set: ") and expect in problems[0], problems
    _assert_well_formed(problems, path)


def test_a_key_given_twice_names_both_lines(tmp_path):
    path = write(
        tmp_path, TOY.replace("  chains: 8\n", "  chains: 8\n  steps_between_draws: 3\n  chains: 4\n").encode()
    )
    (p,) = _problems(path)[0]
    assert p == f"{path}:42: sampler.chains: given twice in one mapping, on lines 40 and 42; keep one"


def test_many_problems_are_capped(tmp_path):
    path = write(tmp_path, (TOY + "".join(f"k{i}: 1\n" for i in range(5000))).encode())
    problems, seconds = _problems(path)
    assert len(problems) == 51 and "… and 4950 more problems" in problems[-1] and seconds < TIME_LIMIT_S
    _assert_well_formed(problems, path)


def test_report_sql_is_one_statement_checked_without_file_access(tmp_path):
    two = write_spec(tmp_path, SECTIONED.replace("FROM checkpoints WHERE study = 'tiny'", "FROM checkpoints; SELECT 1"))
    (p,) = _problems(two, load=load_checked)[0]
    assert "report.sections.1.sql: expected one SELECT query, got 2 statements" in p
    reads = write_spec(
        tmp_path, SECTIONED.replace("FROM checkpoints WHERE study = 'tiny'", "FROM read_csv('/dev/stdin')")
    )
    assert _problems(reads, load=load_checked)[0] == []  # not read now: checked when the report runs


# ----------------------------------------------------------------------------- what stays accepted


def test_shipped_and_test_specs_still_load(tmp_path):
    for path in sorted((REPO / "specs").glob("*.yaml")):
        load_checked(path)
    load_checked(write_spec(tmp_path, SECTIONED))


@pytest.mark.parametrize(
    "old, new, field, value",
    [
        ("eps: auto", "eps: 1e-5", "eps", 1e-5),  # PyYAML reads 1e-5 (no dot) as a string
        ("eps: auto", "eps: '5e-6'", "eps", 5e-6),
        ("gamma: 1.0e+5", "gamma: 100000", "gamma", 1e5),  # ints are numbers
        ("nbeta: 1.0e+4", "nbeta: 1e4", "nbeta", 1e4),
    ],
)
def test_numeric_strings_and_ints_are_floats(tmp_path, old, new, field, value):
    spec = load_spec(write(tmp_path, TOY.replace(old, new).encode()))
    assert getattr(spec.study.sampler, field) == value


def test_set_values_parse_as_before(tmp_path):
    s = load_spec(write(tmp_path, TOY.encode()), ["sampler.eps=2e-6", "sampler.draws=10", "seed=4"]).study
    assert (s.sampler.eps, s.sampler.draws, s.seed) == (2e-6, 10, 4)


def test_structural_class_names_match_the_rules():
    from sbif_dsl.tokens.classes import STRUCTURAL_DEFAULT

    assert tuple(STRUCTURAL_DEFAULT) == STRUCTURAL_CLASSES


def test_class_pairs_may_name_the_specs_own_classes(tmp_path):
    text = TINY_SPEC + "token_classes:\n  remainder: rest\n  rules:\n    mine: {kind: token_ids, ids: [1]}\n"
    text += "report:\n  class_pairs: [[mine, rest], [induction, digits]]\n"
    load_spec(write_spec(tmp_path, text))
    bad = write_spec(tmp_path, text.replace("[mine, rest]", "[mine, other]"), "bad.yaml")
    (p,) = _problems(bad)[0]
    assert "report.class_pairs.0.1: no token class 'other'" in p


# ----------------------------------------------------------------------------- mutations of real specs


@settings(max_examples=2000, deadline=int(TIME_LIMIT_S * 1000), suppress_health_check=list(HealthCheck), database=None)
@given(mutated())
def test_mutated_specs_load_or_say_why_in_one_line(case):
    """Thousands of damaged specs: `load_spec` returns or raises SpecError (nothing else), one line per problem."""
    _, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), data)
        problems, seconds = _problems(path)
        _assert_well_formed(problems, path)
        assert seconds < TIME_LIMIT_S


@settings(
    max_examples=60, deadline=int(TIME_LIMIT_S * 1000) * 2, suppress_health_check=list(HealthCheck), database=None
)
@given(mutated({"sectioned": SECTIONED}))
def test_mutated_specs_with_report_sections_through_load_checked(case):
    _, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), data)
        problems, seconds = _problems(path, load=load_checked)
        _assert_well_formed(problems, path)
        assert seconds < TIME_LIMIT_S


# ----------------------------------------------------------------------------- the CLI, bounded


WORST = {"validate": "deep_flow", "run": "billion_laughs", "plan": "not_utf8", "report": "duplicate_key"}


def test_cli_exits_2_without_traceback(tmp_path):
    by_name = {c.name: c for c in CASES}
    env = {"SBIF_CACHE": str(tmp_path / "cache" / "sbif.duckdb")}
    for command, name in WORST.items():
        path = write(tmp_path, by_name[name].data, f"{name}.yaml")
        proc = sbif(command, str(path), check=False, env=env)
        assert proc.returncode == 2, (name, command, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr and proc.stderr.startswith(f"error: {path}:"), proc.stderr[:300]
    proc = sbif("validate", str(write(tmp_path, TOY.encode())), "--set", "x=[&a [1], *a]", check=False, env=env)
    assert proc.returncode == 2 and "YAML alias" in proc.stderr and "Traceback" not in proc.stderr


MEASURE = """
import json, sys, time
from pathlib import Path
from sbif_dsl.checks import load_checked
from sbif_dsl.errors import SpecError
out = {}
for path in sys.argv[1:]:
    start = time.perf_counter()
    try:
        load_checked(path)
    except SpecError:
        pass
    out[Path(path).stem] = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking (pytest) process
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def test_worst_cases_stay_within_time_and_memory(tmp_path):
    """Every hand-written worst case in one process: each under 2 s, the process's peak RSS under 200 MB."""
    paths = [str(write(tmp_path, c.data, f"{c.name}.yaml")) for c in CASES]
    proc = subprocess.run([sys.executable, "-c", MEASURE, *paths], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout)
    peak = measured.pop("peak_rss_mb")
    assert peak < 200, (peak, measured)
    slow = {k: round(v, 2) for k, v in measured.items() if v >= TIME_LIMIT_S}
    assert not slow, slow


def test_size_limit_is_one_mb():
    assert MAX_BYTES == 1_000_000

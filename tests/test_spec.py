"""Spec parsing and every class of bad input: one clear line with file, line, field path, expectation."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbif_dsl.errors import SpecError
from sbif_dsl.spec import json_schema, load_spec
from sbif_dsl.spec.models import CheckpointSchedule, HierarchyData, LoadedCheckpoints, Sampler, Training

from .conftest import TINY_SPEC, sbif, write_spec


def errors_of(tmp_path, text: str, overrides=None) -> list[str]:
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value.problems


def test_tiny_spec_loads(tiny_spec):
    s = load_spec(tiny_spec).study
    assert s.name == "tiny" and s.training.checkpoint_steps() == [10, 30, 60]
    assert [a.kind for a in s.analyses] == ["bif", "bif", "llc", "loss_kernel"]
    assert s.sampler.eps == 1e-4


def test_repo_specs_validate():
    from .conftest import REPO

    for path in sorted((REPO / "specs").glob("*.yaml")):
        load_spec(path)


def test_unknown_key_names_line_and_suggests(tmp_path):
    (err,) = errors_of(tmp_path, TINY_SPEC.replace("  hidden: [6]", "  hiden: [6]"))
    assert err.startswith(f"{tmp_path / 'spec.yaml'}:12: model.hiden: unknown field; did you mean 'hidden'?")


def test_wrong_type(tmp_path):
    (err,) = errors_of(tmp_path, TINY_SPEC.replace("chains: 3", "chains: many"))
    assert ":29: sampler.chains:" in err and "integer" in err and "'many'" in err


def test_out_of_range(tmp_path):
    (err,) = errors_of(tmp_path, TINY_SPEC.replace("eps: 1.0e-4", "eps: -1"))
    assert ":26: sampler.eps:" in err and "greater than 0" in err


def test_bfloat16_precision_needs_float32_weights(tmp_path):
    text = TINY_SPEC.replace("seed: 3\n", "seed: 3\ndtype: float64\n").replace(
        "  burn_in: 5\n", "  burn_in: 5\n  precision: bfloat16\n"
    )
    (err,) = errors_of(tmp_path, text)
    assert "sampler.precision:" in err and "float64" in err
    line = text.splitlines().index("  precision: bfloat16") + 1
    assert f":{line}: " in err
    (err,) = errors_of(tmp_path, TINY_SPEC.replace("  burn_in: 5\n", "  burn_in: 5\n  precision: half\n"))
    assert "sampler.precision:" in err and "bfloat16" in err


def test_unknown_kind(tmp_path):
    (err,) = errors_of(tmp_path, TINY_SPEC.replace("kind: deep_linear", "kind: deep_nonlinear"))
    assert "model:" in err and "unknown kind 'deep_nonlinear'" in err and "deep_linear" in err


def test_missing_required(tmp_path):
    (err,) = errors_of(tmp_path, TINY_SPEC.replace("name: tiny\n", ""))
    assert "name: required field missing" in err


def test_several_problems_reported_together(tmp_path):
    errs = errors_of(tmp_path, TINY_SPEC.replace("chains: 3", "chains: 0").replace("lr: 0.2", "lr: x"))
    assert len(errs) == 2


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("    data: left", "    data: right", "observables.1.data: no data set 'right'; available: left, train"),
        ("    target: left", "    target: lft", "analyses.1.target: no observable 'lft'"),
        ("    left: [item0, item1]", "    left: [item0, dog]", "data.query_sets.left.1: no item 'dog'"),
        ("  - name: left", "  - name: train", "observables.1.name: duplicate observable name 'train'"),
        ("    name: train_on_left\n", "", "duplicate analysis name 'bif'"),
    ],
)
def test_inconsistent_references(tmp_path, old, new, expect):
    assert old in TINY_SPEC
    errs = errors_of(tmp_path, TINY_SPEC.replace(old, new))
    assert any(expect in e for e in errs), errs
    assert all(e.startswith(str(tmp_path / "spec.yaml") + ":") for e in errs)


def test_invalid_yaml_has_line(tmp_path):
    (err,) = errors_of(tmp_path, TINY_SPEC.replace("  hidden: [6]", "  hidden: [6"))
    assert "invalid YAML" in err and f"{tmp_path / 'spec.yaml'}:" in err


def test_top_level_not_a_mapping(tmp_path):
    (err,) = errors_of(tmp_path, "- just\n- a list\n")
    assert "expected a mapping" in err


def test_set_override_applies_before_validation(tiny_spec):
    s = load_spec(tiny_spec, ["sampler.eps=2e-4", "analyses.0.normalize=none"]).study
    assert s.sampler.eps == 2e-4 and s.analyses[0].normalize == "none"


def test_set_override_is_validated(tiny_spec):
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec, ["sampler.chains=-2"])
    assert "sampler.chains" in info.value.problems[0] and "--set" in info.value.problems[0]


# each model validator fires (decorator order matters in Pydantic v2)
def test_validators_fire():
    with pytest.raises(ValueError, match="features_per_level needs 3"):
        HierarchyData(kind="hierarchy", branching=[2, 2], features_per_level=[1, 1])
    with pytest.raises(ValueError, match="item_names needs 4"):
        HierarchyData(kind="hierarchy", branching=[2, 2], features_per_level=[1, 1, 1], item_names=["a"])
    with pytest.raises(ValueError, match="exactly one of 'steps' or 'log_spaced'"):
        CheckpointSchedule()
    with pytest.raises(ValueError, match="exceed training.steps"):
        Training(steps=10, checkpoints=CheckpointSchedule(steps=[20]))
    with pytest.raises(ValueError, match="overshoots"):
        Sampler(eps=1e-2, gamma=1000)
    with pytest.raises(ValueError, match="capturing group"):
        LoadedCheckpoints(glob="*.pt", step_pattern=r"\d+")


def test_training_or_checkpoints_exclusive(tmp_path):
    errs = errors_of(tmp_path, TINY_SPEC + "checkpoints:\n  glob: '*.pt'\n")
    assert "exactly one of 'training'" in errs[0]


def test_log_spaced_schedule():
    t = Training(steps=1000, checkpoints=CheckpointSchedule(log_spaced=4))
    assert t.checkpoint_steps() == [0, 1, 10, 100, 1000]


def test_json_schema_has_descriptions():
    schema = json_schema()
    sampler = schema["$defs"]["Sampler"]["properties"]
    number, auto = sampler["eps"]["anyOf"]  # eps: a number in (0, 1], or auto
    assert number["exclusiveMinimum"] == 0 and auto["const"] == "auto"
    assert all("description" in p for p in sampler.values())
    json.dumps(schema)


def test_cli_validate_exit_codes(tmp_path, tiny_spec):
    ok = sbif("validate", str(tiny_spec))
    assert ok.returncode == 0 and "ok:" in ok.stdout
    bad = write_spec(tmp_path, TINY_SPEC.replace("hidden: [6]", "hidden: [0]"), name="bad.yaml")
    proc = sbif("validate", str(bad), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {bad}:12: model.hidden.0:") and "Traceback" not in proc.stderr
    missing = sbif("validate", str(tmp_path / "nope.yaml"), check=False)
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_cli_schema_is_json():
    proc = sbif("schema")
    assert json.loads(proc.stdout)["title"] == "sbif_dsl study spec"


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(string.printable, max_size=8)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(
        [
            "sampler.eps",
            "sampler.chains",
            "sampler.method",
            "model.hidden",
            "training.checkpoints",
            "seed",
            "name",
            "observables",
            "analyses.0",
            "data.branching",
            "report.pairs",
            "device",
            "sampler",
        ]
    ),
    value=st.one_of(
        yaml_scalars, st.lists(yaml_scalars, max_size=3), st.dictionaries(st.text(max_size=4), yaml_scalars, max_size=2)
    ),
)
def test_fuzz_bad_values_only_raise_spec_errors(tmp_path, field, value):
    """Whatever a user writes into a field, the loader accepts it or raises SpecError: never another exception."""
    import yaml

    path = write_spec(tmp_path, TINY_SPEC)
    try:
        load_spec(
            path, [f"{field}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
        )
    except SpecError as e:
        assert all(p.startswith(str(path)) or p.startswith("--set") for p in e.problems)

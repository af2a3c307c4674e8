"""Plan keys: what invalidates what. Golden keys pin the hashing; edits show which stages they touch."""

from __future__ import annotations

from sbif_dsl.hashing import canonical_json, derive_seed, stage_key
from sbif_dsl.plan import build_plan
from sbif_dsl.runtime import Runtime
from sbif_dsl.spec import load_spec
from sbif_dsl.store import Store

from .conftest import TINY_SPEC, write_spec


def keys_by_kind(tmp_path, text: str, overrides=None, name="spec.yaml") -> dict[str, list[str]]:
    spec = load_spec(write_spec(tmp_path, text, name=name), overrides)
    plan = build_plan(Runtime(spec), Store(tmp_path / "c.duckdb"))
    out: dict[str, list[str]] = {}
    for s in plan.stages:
        out.setdefault(s.kind, []).append(s.key)
    return out


def test_hash_primitives_are_pinned():
    assert canonical_json({"b": 1, "a": [1.5, "1"]}) == '{"a":[1.5,"1"],"b":1}'
    assert stage_key("x", 1, {"a": 1}, ["k2", "k1"]) == stage_key("x", 1, {"a": 1}, ["k1", "k2"])
    assert stage_key("x", 1, {"a": 1}, []) != stage_key("x", 1, {"a": "1"}, [])  # 1 and "1" differ
    assert stage_key("x", 1, {"a": 1}, []) != stage_key("x", 2, {"a": 1}, [])  # code version bump
    assert derive_seed(0, "sample", "k") == derive_seed(0, "sample", "k") != derive_seed(1, "sample", "k")


def test_golden_stage_key():
    """A literal key: if this changes, every user's cache silently invalidates; bump versions on purpose."""
    assert stage_key("sample", 1, {"eps": 1e-05, "chains": 8}, ["abc"]) == (
        "958c524e7483e89e274029d5561dc1323ac6bdd128fce4a326e53c6a30bc2897"
    )


def test_same_spec_same_keys(tmp_path):
    assert keys_by_kind(tmp_path, TINY_SPEC) == keys_by_kind(tmp_path, TINY_SPEC, name="copy.yaml")


def test_cosmetic_fields_change_nothing(tmp_path):
    base = keys_by_kind(tmp_path, TINY_SPEC)
    cosmetic = TINY_SPEC.replace("name: tiny\n", "name: tiny\ntitle: A title\ndescription: words\n")
    cosmetic += "report:\n  title: Other\n  pairs: [[item0, item1]]\n"
    assert keys_by_kind(tmp_path, cosmetic, name="c.yaml") == base


def test_sampler_change_resamples_but_does_not_retrain(tmp_path):
    base = keys_by_kind(tmp_path, TINY_SPEC)
    new = keys_by_kind(tmp_path, TINY_SPEC, ["sampler.gamma=2000"], name="g.yaml")
    assert new["dataset"] == base["dataset"] and new["checkpoint"] == base["checkpoint"]
    assert set(new["sample"]).isdisjoint(base["sample"]) and set(new["bif"]).isdisjoint(base["bif"])


def test_added_checkpoint_only_adds_its_stages(tmp_path):
    base = keys_by_kind(tmp_path, TINY_SPEC)
    new = keys_by_kind(tmp_path, TINY_SPEC.replace("steps: [10, 30, 60]", "steps: [10, 20, 30, 60]"), name="a.yaml")
    for kind in base:
        assert set(base[kind]) <= set(new[kind]), kind
    assert len(new["checkpoint"]) == 4 and len(new["sample"]) == 4


def test_training_change_invalidates_checkpoints_and_below(tmp_path):
    base = keys_by_kind(tmp_path, TINY_SPEC)
    new = keys_by_kind(tmp_path, TINY_SPEC, ["training.lr=0.1"], name="t.yaml")
    assert new["dataset"] == base["dataset"]
    assert set(new["checkpoint"]).isdisjoint(base["checkpoint"]) and set(new["sample"]).isdisjoint(base["sample"])


def test_analysis_change_keeps_samples(tmp_path):
    base = keys_by_kind(tmp_path, TINY_SPEC)
    new = keys_by_kind(tmp_path, TINY_SPEC, ["analyses.0.normalize=none"], name="n.yaml")
    assert new["sample"] == base["sample"] and new["llc"] == base["llc"]
    assert new["bif"][0] != base["bif"][0]


def test_data_change_invalidates_everything(tmp_path):
    base = keys_by_kind(tmp_path, TINY_SPEC)
    new = keys_by_kind(tmp_path, TINY_SPEC, ["data.features_per_level=[2, 3, 1]"], name="d.yaml")
    for kind in base:
        assert set(new[kind]).isdisjoint(base[kind]), kind


def test_seed_changes_training_and_sampling(tmp_path):
    base = keys_by_kind(tmp_path, TINY_SPEC)
    new = keys_by_kind(tmp_path, TINY_SPEC, ["seed=4"], name="s.yaml")
    assert new["dataset"] == base["dataset"]
    assert set(new["checkpoint"]).isdisjoint(base["checkpoint"])

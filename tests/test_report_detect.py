"""Transition detection on synthetic curves with KNOWN event positions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest

from sbif_dsl.report.detect import (
    TRANSITION_COLUMNS,
    DetectParams,
    changepoints,
    detect_events,
    detect_transitions,
    loss_drops,
    noise_sigma,
    pairs_frame,
    peak_prominences,
    peaks,
    zero_crossings,
)

from .synthetic_views import TRANSITIONS, checkpoint_steps, demo_frames, sigmoid_up

DROPS = (200, 800, 2000)


def decades(a: float, b: float) -> float:
    return abs(math.log10(a + 1) - math.log10(b + 1))


def staged_loss(steps: np.ndarray, noise: float = 0.0, seed: int = 0) -> pl.DataFrame:
    """Three sigmoid drops (on log-step) at DROPS, sizes 0.5, 0.25, 0.12."""
    rng = np.random.default_rng(seed)
    loss = 0.05 + 0.5 * (1 - sigmoid_up(steps, DROPS[0])) + 0.25 * (1 - sigmoid_up(steps, DROPS[1]))
    loss = loss + 0.12 * (1 - sigmoid_up(steps, DROPS[2], 0.03))
    return pl.DataFrame({"step": steps, "loss": loss + rng.normal(0, noise, steps.size)})


# ------------------------------------------------------------------------------------------ parameters


def test_params_reject_bad_values():
    with pytest.raises(ValueError, match="prominence"):
        DetectParams(prominence=-0.1)
    with pytest.raises(ValueError, match="prominences"):
        DetectParams(prominence=1.5)
    with pytest.raises(ValueError, match="smoothing"):
        DetectParams(smooth_window=0)
    with pytest.raises(ValueError, match="finite"):
        DetectParams(min_abs=float("nan"))
    assert DetectParams().value == "bif_corr"


def test_params_from_the_specs_detect_settings_by_name():
    """The spec's `report.detect` fields are DetectParams fields of the same names and defaults, so
    `DetectParams(**settings.model_dump())` builds the report's parameters from a spec."""
    from sbif_dsl.spec.models import DetectSettings

    assert set(DetectSettings.model_fields) <= {f.name for f in dataclasses.fields(DetectParams)}
    assert DetectParams(**DetectSettings().model_dump()) == DetectParams()
    settings = {"prominence": 0.3, "min_run": 3, "noise_k": 0.0, "curve_smooth": 5, "value": "bif_cov"}
    p = DetectParams(**DetectSettings(**settings).model_dump())
    assert {k: getattr(p, k) for k in settings} == settings
    assert DetectParams(**settings) == p  # a plain mapping works the same


# --------------------------------------------------------------------------------------- zero crossings


@pytest.mark.parametrize("seed", range(5))
def test_sine_zero_crossings_at_known_positions(seed):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 4 * np.pi - 0.3, 300)
    df = pl.DataFrame({"step": x, "value": np.sin(x) + rng.normal(0, 0.05, x.size)})
    zc = zero_crossings(df)
    assert zc.height == 3
    assert zc["step"].to_list() == pytest.approx([np.pi, 2 * np.pi, 3 * np.pi], abs=0.15)
    assert zc["direction"].to_list() == ["down", "up", "down"]
    # the bracket is two adjacent samples whose values straddle zero, in the reported direction
    for r in zc.iter_rows(named=True):
        assert r["step_before"] < r["step_after"]
        assert r["step_before"] <= r["step"] + 0.15 and r["step"] - 0.15 <= r["step_after"]


def test_zero_crossings_ignore_wiggles_inside_the_band():
    # helpful (−0.5), then wiggles of ±0.01 around zero for a while, then harmful (+0.5): ONE flip
    x = np.arange(100, dtype=float)
    y = np.where(x < 30, -0.5, np.where(x < 70, 0.01 * np.sin(3 * x), 0.5))
    zc = zero_crossings(pl.DataFrame({"step": x, "value": y}), noise_k=0)
    assert zc.height == 1
    assert zc["direction"][0] == "up"
    assert 29 <= zc["step_before"][0] and zc["step_after"][0] <= 70


def test_zero_crossings_min_abs_threshold():
    x = np.linspace(0, 20, 200)
    df = pl.DataFrame({"step": x, "value": 0.02 * np.sin(x)})
    assert zero_crossings(df, min_abs=0.0).height == 6
    assert zero_crossings(df, min_abs=0.05).height == 0  # amplitude below min_abs: tiny wiggles


def test_zero_crossings_per_group_keep_group_columns():
    x = np.linspace(0, 2 * np.pi, 100)
    df = pl.concat(
        [
            pl.DataFrame({"source": "a", "target": "b", "step": x, "value": np.sin(x + 0.5)}),
            pl.DataFrame({"source": "a", "target": "c", "step": x, "value": -np.ones_like(x)}),
        ]
    )
    zc = zero_crossings(df, by=["source", "target"])
    assert zc.columns[:2] == ["source", "target"]
    assert set(zc["target"].to_list()) == {"b"}
    assert zc["step"].to_list() == pytest.approx([np.pi - 0.5, 2 * np.pi - 0.5], abs=0.05)


# ------------------------------------------------------------------------------------------------ peaks


def test_prominence_definition_by_hand():
    pk = peak_prominences(np.array([0, 3, 1, 4, 2, 5, 0], dtype=float))
    assert [p["idx"] for p in pk] == [1, 3, 5]
    assert [p["prominence"] for p in pk] == [2.0, 2.0, 5.0]
    # half-prominence width of the last peak: height 2.5 crossed at 4 + 0.5/3 and at 6 - 2.5/5
    assert pk[2]["left"] == pytest.approx(4 + 0.5 / 3)
    assert pk[2]["right"] == pytest.approx(5.5)
    plateau = peak_prominences(np.array([0, 2, 2, 2, 0], dtype=float))
    assert [(p["idx"], p["prominence"]) for p in plateau] == [(2, 2.0)]
    assert peak_prominences(np.arange(5.0)) == []  # monotone: end points are never peaks


@pytest.mark.parametrize("seed", range(5))
def test_bump_peak_at_known_position(seed):
    rng = np.random.default_rng(seed)
    x = np.arange(0, 100, dtype=float)
    y = 0.1 + 0.8 * np.exp(-0.5 * ((x - 37) / 4) ** 2) + rng.normal(0, 0.02, x.size)
    pk = peaks(pl.DataFrame({"step": x, "value": y}), use_abs=False)
    assert pk.height == 1
    assert pk["step"][0] == pytest.approx(37, abs=2)
    assert pk["prominence"][0] == pytest.approx(0.8, abs=0.1)
    assert pk["step_left"][0] < 37 < pk["step_right"][0]
    assert pk["step_right"][0] - pk["step_left"][0] == pytest.approx(2.355 * 4, rel=0.3)  # FWHM


def test_peaks_of_absolute_value_find_helpful_dips():
    x = np.arange(60, dtype=float)
    y = -0.6 * np.exp(-0.5 * ((x - 20) / 3) ** 2) + 0.3 * np.exp(-0.5 * ((x - 45) / 3) ** 2)
    df = pl.DataFrame({"step": x, "value": y})
    both = peaks(df, use_abs=True)
    assert both["step"].to_list() == [20, 45]
    assert both["value"][0] == pytest.approx(-0.6, abs=1e-3)  # the signed value is reported
    assert peaks(df, use_abs=False)["step"].to_list() == [45]


def test_prominence_threshold_is_relative_to_range():
    x = np.arange(100, dtype=float)
    y = np.exp(-0.5 * ((x - 30) / 3) ** 2) + 0.15 * np.exp(-0.5 * ((x - 70) / 3) ** 2)
    df = pl.DataFrame({"step": x, "value": y})
    assert peaks(df, prominence=0.2)["step"].to_list() == [30]
    assert peaks(df, prominence=0.1)["step"].to_list() == [30, 70]


# ------------------------------------------------------------------------------- changepoints / drops


@pytest.mark.parametrize("seed", range(4))
def test_loss_drops_at_known_steps_dense_and_noisy(seed):
    ld = loss_drops(staged_loss(np.arange(0, 3001), noise=0.004, seed=seed))
    assert ld.height == 3
    for got, want in zip(ld["step"].to_list(), DROPS, strict=True):
        assert decades(got, want) < 0.05
    for r in ld.iter_rows(named=True):
        assert r["step_start"] < r["step"] < r["step_end"]
    assert ld["change"].to_list() == pytest.approx([-0.5, -0.25, -0.12], abs=0.04)
    assert (ld["direction"] == "drop").all()


def test_loss_drops_on_sparse_log_spaced_checkpoints():
    ld = loss_drops(staged_loss(np.array(checkpoint_steps(40))))
    assert ld.height == 3
    for got, want in zip(ld["step"].to_list(), DROPS, strict=True):
        assert decades(got, want) < 0.06


def test_changepoints_report_rises_and_falls():
    steps = np.array(checkpoint_steps(60, 10_000))
    y = 2 + 3 * sigmoid_up(steps, 100) - 1.5 * sigmoid_up(steps, 3000)
    cp = changepoints(pl.DataFrame({"step": steps, "llc": y}), y="llc")
    assert cp["direction"].to_list() == ["rise", "drop"]
    assert decades(cp["step"][0], 100) < 0.06 and decades(cp["step"][1], 3000) < 0.06
    assert cp["value_before"][0] == pytest.approx(2, abs=0.1)
    assert cp["value_after"][0] == pytest.approx(5, abs=0.1)
    assert cp["value_after"][1] == pytest.approx(3.5, abs=0.1)


def test_min_change_filters_small_steps():
    steps = np.arange(0, 3001)
    y = 1 - 0.9 * sigmoid_up(steps, 100) - 0.03 * sigmoid_up(steps, 1000)
    df = pl.DataFrame({"step": steps, "loss": y})
    assert loss_drops(df).height == 1  # the 0.03 drop is 3% of the range: below both default thresholds
    loose = DetectParams(min_change=0.01, slope_prominence=0.01)
    assert loss_drops(df, params=loose)["step"].to_list() == pytest.approx([100, 1000], rel=0.15)
    assert loss_drops(df, params=DetectParams(min_change=0.05, slope_prominence=0.01)).height == 1


# ---------------------------------------------------------------------------------- flat curves: nothing


@pytest.mark.parametrize("seed", range(6))
def test_flat_curves_give_no_events(seed):
    rng = np.random.default_rng(seed)
    steps = np.arange(0, 3001, 5)
    ck = np.array(checkpoint_steps(40))
    flat_loss = pl.DataFrame({"step": steps, "loss": 0.7 + rng.normal(0, 0.01, steps.size)})
    flat_llc = pl.DataFrame({"step": ck, "llc_mean": 3 + rng.normal(0, 0.1, ck.size)})
    noise_bif = pl.DataFrame(
        {
            "step": np.tile(ck, 2),
            "source": ["a"] * (2 * ck.size),
            "target": ["b"] * ck.size + ["c"] * ck.size,
            "bif_corr": np.concatenate([rng.normal(0, 0.02, ck.size), -0.4 + rng.normal(0, 0.02, ck.size)]),
        }
    )
    assert loss_drops(flat_loss).is_empty()
    assert changepoints(flat_llc, y="llc_mean").is_empty()
    assert zero_crossings(pairs_frame(noise_bif), by=["source", "target"]).is_empty()
    assert peaks(pairs_frame(noise_bif), by=["source", "target"]).is_empty()
    tr = detect_transitions(flat_loss, flat_llc, noise_bif)
    assert tr.is_empty() and tr.columns == TRANSITION_COLUMNS


def test_exactly_constant_curves_and_tiny_frames():
    df = pl.DataFrame({"step": [0, 1, 2, 3, 4, 5], "value": [1.0] * 6})
    assert zero_crossings(df).is_empty()
    assert peaks(df).is_empty()
    assert changepoints(df).is_empty()
    assert changepoints(df.head(2)).is_empty()
    assert noise_sigma(np.ones(10)) == 0.0
    assert detect_events(None, None, None).is_empty()


def test_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match="lacks column"):
        zero_crossings(pl.DataFrame({"step": [1, 2]}), y="value")


# ------------------------------------------------------------------------------ merged transition table


def test_transitions_of_the_synthetic_toy_study():
    f = demo_frames(seed=1)
    pairs = [("dog", "cat"), ("dog", "sparrow"), ("dog", "lily")]
    tr = detect_transitions(f["training_curve"], f["llc_summary"], pairs_frame(f["bif"], pairs=pairs))
    assert tr.columns == TRANSITION_COLUMNS
    assert tr.height == 3
    for r, t in zip(tr.iter_rows(named=True), TRANSITIONS, strict=True):
        assert r["step_start"] <= t * 1.15 and r["step_end"] >= t / 1.15
        assert "loss drop" in r["kind"] and "LLC change" in r["kind"]
    first, second, third = tr["what"].to_list()
    assert "dog→lily harmful |BIF| peak" in first
    assert "dog→sparrow turns harmful" in second
    assert "dog→cat turns harmful" in third
    assert "bif_corr" in tr["evidence"][0]


def test_events_have_values_for_marks():
    f = demo_frames(seed=2)
    ev = detect_events(None, None, pairs_frame(f["bif"], pairs=[("dog", "cat"), ("dog", "lily")]))
    flips = ev.filter(pl.col("kind") == "bif_sign_flip")
    assert flips["series"].to_list() == ["dog→cat"] and flips["value"].to_list() == [0.0]
    pk = ev.filter(pl.col("kind") == "bif_peak")
    assert pk["series"].to_list() == ["dog→lily"] and pk["value"][0] > 0.4
    assert decades(pk["step"][0], 200) < 0.1


def test_bif_only_transitions_and_many_pairs_are_summarized():
    f = demo_frames(seed=3)
    tr = detect_transitions(None, None, f["bif"])  # all 64 pairs, no loss/LLC
    assert tr.height == 3
    assert tr["kind"].to_list()[0] == "BIF peak"
    assert "harmful |BIF| peak in 32 pairs" in tr["what"][0]  # animal↔plant pairs, summarized


def test_extra_curves_and_class_bif():
    f = demo_frames(seed=0)
    ind = f["induction_score"].select("step", value="score")
    tr = detect_transitions(None, None, f["class_bif"], curves={"induction score": ind})
    assert tr.height == 1
    assert "induction score change" in tr["kind"][0] and "BIF sign flip" in tr["kind"][0]
    assert "turns harmful" in tr["what"][0]


def test_one_study_at_a_time():
    f = demo_frames()
    two = pl.concat([f["llc_summary"], f["llc_summary"].with_columns(study=pl.lit("other"))])
    with pytest.raises(ValueError, match="one study"):
        detect_transitions(None, two, None)


def test_pairs_frame_normalizes_both_views():
    f = demo_frames()
    pf = pairs_frame(f["bif"], "bif_cov", pairs=[("dog", "cat")])
    assert pf.columns == ["step", "analysis", "source", "target", "value"]
    assert set(pf["target"].to_list()) == {"cat"}
    cf = pairs_frame(f["class_bif"])
    assert {"source", "target", "value"} <= set(cf.columns)
    with pytest.raises(ValueError, match="lacks column"):
        pairs_frame(f["bif"], "nope")


def test_single_sample_spikes_are_not_sign_flips():
    y = np.full(40, -0.5)
    y[20] = 0.5  # one outlier checkpoint
    df = pl.DataFrame({"step": np.arange(40.0), "value": y})
    assert zero_crossings(df).is_empty()
    assert zero_crossings(df, min_run=1)["direction"].to_list() == ["up", "down"]

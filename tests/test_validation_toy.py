"""The demo study against its ground truth: BIF vs leave-one-out retraining on specs/toy_hierarchy.yaml, as shipped
(SCIENCE.md §5). Slow: it runs the whole demo (~50 s on a 2-core CPU)."""

from __future__ import annotations

import json
import math

import pytest

from .conftest import sbif

pytestmark = pytest.mark.slow  # reads the session's demo run (conftest.demo_cache)


def _q(sql: str, cache) -> list[dict]:
    return json.loads(sbif("query", sql, "--format", "json", cache=cache).stdout)


def test_bif_agrees_with_leave_one_out(demo_cache):
    """Pearson(BIF −Cov, LOO Δ) over all 56 ordered pairs × 45 checkpoints >= 0.7 (measured: 0.715)."""
    overall = _q("SELECT * FROM agreement WHERE scope = 'overall' AND analysis = 'agreement'", demo_cache)
    assert len(overall) == 1
    row = overall[0]
    assert row["n_pairs"] == 56 * 45 and row["bif_value"] == "bif_cov"
    assert row["pearson"] >= 0.7, row
    # where the LOO effects are large (the transitions), each checkpoint's pairs agree closely
    big = _q(
        """SELECT a.step, a.pearson FROM agreement a JOIN (SELECT step, stddev_pop(loo) AS s FROM agreement_pairs
                WHERE analysis = 'agreement' GROUP BY step) p USING (step)
           WHERE a.scope = 'checkpoint' AND a.analysis = 'agreement' AND p.s > 0.2""",
        demo_cache,
    )
    assert len(big) >= 5 and sorted(r["pearson"] for r in big)[len(big) // 2] > 0.9


def _flip(curve: list[tuple[int, float]], frac: float = 0.2) -> int | None:
    """First step where a curve turns harmful (> frac·max|v|) after having been helpful (< −frac·max|v|)."""
    top = max(abs(v) for _, v in curve)
    helpful = False
    for step, v in curve:
        helpful = helpful or v < -frac * top
        if helpful and v > frac * top:
            return step
    return None


@pytest.mark.parametrize("target", ["cat", "sparrow"])
def test_sign_flips_appear_in_bif_and_loo(demo_cache, target):
    """dog→cat flips from helpful to harmful when dog/cat are told apart, dog→sparrow when mammals/birds are.
    Measured flips (first step past 20% of the curve's max |value|): cat BIF 497 / LOO 585, sparrow BIF 259 /
    LOO 305. Both must flip, within a factor of 2 of each other in training time."""
    bif = _q(
        f"SELECT step, bif_corr AS v FROM bif WHERE source = 'dog' AND target = '{target}' ORDER BY step", demo_cache
    )
    loo = _q(
        f"SELECT step, delta AS v FROM loo WHERE left_out = 'dog' AND target = '{target}' ORDER BY step", demo_cache
    )
    t_bif, t_loo = _flip([(r["step"], r["v"]) for r in bif]), _flip([(r["step"], r["v"]) for r in loo])
    assert t_bif is not None and t_loo is not None, (t_bif, t_loo)
    assert abs(math.log10(t_bif / t_loo)) <= math.log10(2), (t_bif, t_loo)


def test_dog_lily_harmful_peak_coincides(demo_cache):
    """dog→lily is most harmful at the animal/plant transition (step 187) in both."""
    peaks = _q(
        """SELECT 'bif' AS src, arg_max(step, bif_corr) AS step FROM bif WHERE source = 'dog' AND target = 'lily'
                  UNION ALL
                  SELECT 'loo', arg_max(step, delta) FROM loo WHERE left_out = 'dog' AND target = 'lily'""",
        demo_cache,
    )
    steps = {r["src"]: r["step"] for r in peaks}
    assert 150 <= steps["bif"] <= 260 and 150 <= steps["loo"] <= 260, steps

"""How well one attribution agrees with another over pairs: Pearson, Spearman, sign agreement (in float64).

Computed here rather than in SQL: DuckDB's parallel aggregation does not fix the summation order, so a statistic
computed at query time differs in its last digits between two identical runs.
"""

from __future__ import annotations

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    ac, bc = a - a.mean(), b - b.mean()
    return float((ac @ bc) / np.sqrt((ac @ ac) * (bc @ bc)))


def agreement(bif: np.ndarray, loo: np.ndarray) -> dict:
    """Statistics of paired values (both negative when helpful, so agreement means positive correlations).

    sign_agreement: fraction of pairs with sign(bif) = sign(loo) among pairs with loo ≠ 0;
    sign_agreement_weighted: the same weighted by |loo| (signs of tiny effects are noise)."""
    bif, loo = np.asarray(bif, dtype=np.float64), np.asarray(loo, dtype=np.float64)
    same = np.sign(bif) == np.sign(loo)
    nonzero = loo != 0
    weight = np.abs(loo).sum()
    return {
        "n_pairs": len(bif),
        "pearson": _pearson(bif, loo),
        "spearman": _pearson(average_ranks(bif), average_ranks(loo)) if _pearson(bif, loo) is not None else None,
        "sign_agreement": float(same[nonzero].mean()) if nonzero.any() else None,
        "sign_agreement_weighted": float((np.abs(loo) * same).sum() / weight) if weight > 0 else None,
    }

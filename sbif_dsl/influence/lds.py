"""Linear datamodeling score (SCIENCE.md §9): how well summed attributions predict retrained subset losses.

    g_j(S) = (nβ/k)·Σ_{i∈S} τ_ij − (nβ/n)·Σ_i τ_ij      (τ = BIF, negative = helpful; k = the loss' divisor)
    LDS_j  = Spearman over subsets m of (g_j(S_m), l_j(S_m));   LDS = mean over targets j

g is the first-order change of E_p[l_j] when the training loss (1/n)·Σ_i l_i is replaced by (1/k)·Σ_{i∈S} l_i
(dE[φ]/d(weight of l_i) = −nβ·Cov(l_i, φ) = nβ·BIF_iφ, SCIENCE.md §8): a helpful i (τ < 0) in S lowers l_j, so g
correlates positively with the measured loss. The scale and the offset do not change a correlation; they make g
read as a predicted loss change. The interval is a bootstrap over subsets: a resample with counts c is the
weighted correlation with weights c (ties from repeated subsets share their mean rank), so it is exact and runs
without materializing the resampled lists. Its percentile interval needs no Fisher z (SCIENCE.md §8): every
resample's LDS is a mean of correlations, so its quantiles lie in [−1, 1], and percentiles commute with the monotone
atanh (tests/test_lds.py). Everything in float64 numpy with a seeded generator: bitwise the same.
"""

from __future__ import annotations

import warnings

import numpy as np


def subset_predictions(tau: np.ndarray, masks: np.ndarray, nbeta: float, divisor: float) -> np.ndarray:
    """g (subsets, targets) from attributions tau (n, q) and subset masks (subsets, n) bool."""
    tau = np.asarray(tau, dtype=np.float64)
    inside = masks.astype(np.float64) @ tau  # (subsets, q): Σ_{i∈S} τ_ij
    return nbeta / divisor * inside - nbeta / tau.shape[0] * tau.sum(axis=0)


def weighted_ranks(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ranks of x (m,) in the multiset holding item k counts[b, k] times: (B, m)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    start = np.r_[True, xs[1:] != xs[:-1]]  # (m,) first sorted position of each group of equal values
    group = np.cumsum(start) - 1
    per_group = np.add.reduceat(counts[:, order], np.flatnonzero(start), axis=1)  # (B, groups)
    below = np.cumsum(per_group, axis=1) - per_group
    rank = below + (per_group + 1) / 2  # (B, groups): the mean rank of the group's copies
    out = np.empty_like(counts, dtype=np.float64)
    out[:, order] = rank[:, group]
    return out


def weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of x, y (B, m) or (m,) with weights w (B, m): (B,); NaN where a weighted variance is 0."""
    total = w.sum(axis=1)
    xc = x - (w * x).sum(axis=1, keepdims=True) / total[:, None]
    yc = y - (w * y).sum(axis=1, keepdims=True) / total[:, None]
    sxy, sxx, syy = ((w * a * b).sum(axis=1) for a, b in ((xc, yc), (xc, xc), (yc, yc)))
    ok = ~(_constant(x, w) | _constant(y, w))  # a constant side has no correlation (not rounding noise's)
    scale = np.sqrt(sxx * syy)
    return np.where(ok & (scale > 0), sxy / np.where(scale > 0, scale, 1.0), np.nan)


def _constant(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,): whether every item with positive weight has the same value."""
    x = np.broadcast_to(x, w.shape)
    return np.where(w > 0, x, np.inf).min(axis=1) == np.where(w > 0, x, -np.inf).max(axis=1)


def per_target(pred: np.ndarray, measured: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman and Pearson per target under each weighting: pred, measured (m, q); counts (B, m) -> (B, q) each."""
    b, q = counts.shape[0], pred.shape[1]
    w = counts.astype(np.float64)
    spearman, pearson = np.empty((b, q)), np.empty((b, q))
    for j in range(q):
        pearson[:, j] = weighted_pearson(pred[:, j], measured[:, j], w)
        spearman[:, j] = weighted_pearson(weighted_ranks(pred[:, j], w), weighted_ranks(measured[:, j], w), w)
    return spearman, pearson


def bootstrap_counts(m: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, m) multiplicities of m subsets drawn with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(resamples, m))
    return np.stack([np.bincount(r, minlength=m) for r in idx]).astype(np.float64) if resamples else np.empty((0, m))


def _mean_over_targets(r: np.ndarray) -> np.ndarray:
    """(B, q) -> (B,): the mean over the targets with a defined correlation; NaN where none is."""
    ok = np.isfinite(r)
    n = ok.sum(axis=1)
    return np.where(n > 0, np.where(ok, r, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)


def _summary(point: float, boot: np.ndarray, chain_se: float | None = None, chain_df: int = 0) -> dict:
    """{value, se, lo, hi, se_chains}: the bootstrap over subsets (percentile interval), widened by the chains' noise
    where its jackknife SE is known: SE² = SE²_boot + SE²_chains, each side of the interval
    √(side_boot² + (t·SE_chains)²) (the two sources are independent: the subsets drawn, the SGLD draws)."""
    good = boot[np.isfinite(boot)]
    chain = chain_se if chain_se is not None and np.isfinite(chain_se) else None
    if not np.isfinite(point) or good.size < 2:
        return {"value": None if not np.isfinite(point) else float(point), "se": None, "lo": None, "hi": None,
                "se_chains": chain}  # fmt: skip
    lo, hi = np.quantile(good, [0.025, 0.975])
    se = float(good.std(ddof=1))
    if chain is not None:
        from .uncertainty import t975

        half = t975(chain_df) * chain
        lo = point - np.hypot(point - lo, half)
        hi = point + np.hypot(hi - point, half)
        se = float(np.hypot(se, chain))
    return {"value": float(point), "se": se, "lo": float(max(lo, -1.0)), "hi": float(min(hi, 1.0)),
            "se_chains": chain}  # fmt: skip


def chain_jackknife_se(pred_reps: np.ndarray, measured: np.ndarray) -> tuple[dict, int]:
    """The delete-one-chain jackknife SE of one checkpoint's LDS (Spearman and Pearson): pred_reps (G, subsets,
    targets), the predictions from the BIF of all chains but chain g. Returns ({name: SE or NaN}, G − 1)."""
    g = pred_reps.shape[0]
    ones = np.ones((1, pred_reps.shape[1]))
    reps = {"spearman": [], "pearson": []}
    for r in pred_reps:
        sp, pe = per_target(r, measured, ones)
        reps["spearman"].append(_mean_over_targets(sp)[0])
        reps["pearson"].append(_mean_over_targets(pe)[0])
    out = {}
    for name, v in reps.items():
        v = np.asarray(v)
        out[name] = float(np.sqrt((g - 1) / g * ((v - v.mean()) ** 2).sum())) if g > 1 and np.isfinite(v).all() \
            else np.nan  # fmt: skip
    return out, g - 1


def lds(pred: np.ndarray, measured: np.ndarray, resamples: int, seed: int, chain_preds: list | None = None) -> dict:
    """LDS per checkpoint and overall. pred, measured: (checkpoints, subsets, targets).

    chain_preds: per checkpoint, the (chains, subsets, targets) predictions of the delete-one-chain BIFs (or None):
    their jackknife adds the BIF's own Monte Carlo noise to every SE and interval (`_summary`). Returns
    {"checkpoint": [per checkpoint {spearman, pearson: {value, se, lo, hi, se_chains}, n_targets}], "overall": ...,
    "per_target": (spearman, pearson) (checkpoints, targets)}. Overall = the mean over checkpoints of the
    per-checkpoint LDS (those where it is defined), bootstrapped with the same resampled subsets; its chain SE is
    √(Σ SE²_c)/K (checkpoints sample independent chains)."""
    k, m, _ = pred.shape
    counts = np.vstack([np.ones((1, m)), bootstrap_counts(m, resamples, seed)])  # row 0: the sample itself
    rows, boots, targets = [], {"spearman": [], "pearson": []}, ([], [])
    chain_var = {"spearman": [], "pearson": []}
    df = 0
    for c in range(k):
        sp, pe = per_target(pred[c], measured[c], counts)  # (1 + B, q)
        targets[0].append(sp[0])
        targets[1].append(pe[0])
        row = {"n_targets": int(np.isfinite(sp[0]).sum())}
        chain_se = {"spearman": None, "pearson": None}
        if chain_preds is not None and chain_preds[c] is not None:
            chain_se, df = chain_jackknife_se(chain_preds[c], measured[c])
        for name, r in (("spearman", sp), ("pearson", pe)):
            mean = _mean_over_targets(r)  # (1 + B,)
            boots[name].append(mean)
            row[name] = _summary(mean[0], mean[1:], chain_se[name], df)
            chain_var[name].append(np.nan if chain_se[name] is None else chain_se[name] ** 2)
        rows.append(row)
    overall = {"n_targets": int(max((r["n_targets"] for r in rows), default=0))}
    for name, per in boots.items():
        stack = np.vstack(per) if per else np.full((1, 1 + resamples), np.nan)  # (checkpoints, 1 + B)
        ok = np.isfinite(stack[:, :1]).ravel()  # checkpoints with a defined LDS
        with warnings.catch_warnings():  # a resample may leave every checkpoint undefined: NaN, said below
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(stack[ok], axis=0) if ok.any() else np.full(1 + resamples, np.nan)
        var = np.asarray(chain_var[name])[ok] if per else np.array([])
        chain_se = float(np.sqrt(var.sum()) / var.size) if var.size and np.isfinite(var).all() else None
        overall[name] = _summary(mean[0], mean[1:], chain_se, df)
    return {"checkpoint": rows, "overall": overall, "per_target": (np.array(targets[0]), np.array(targets[1]))}

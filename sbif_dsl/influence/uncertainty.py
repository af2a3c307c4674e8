"""Standard errors and 95% intervals of any estimate from SGLD traces: the delete-one-chain jackknife.

Chains are independent; draws within a chain are not (SGLD draws are autocorrelated, often strongly). So the
unit of replication is the chain. For an estimator θ of pooled traces (a covariance, a correlation, a class
aggregate), θ_(−c) is the estimate without chain c, and

    SE² = (C − 1)/C · Σ_c (θ_(−c) − θ̄_(·))²,        95% interval: θ ± t_{0.975, C−1} · SE

(Efron & Stein: for a smooth θ this is the standard error of θ itself, autocorrelation included, because it
only uses between-chain variation). With one chain its draws are cut into `BATCHES` contiguous batches used as
pseudo-chains (batch means): valid while a batch is much longer than the autocorrelation time.
Correlations (scale "fisher_z", SCIENCE.md §8): the jackknife runs on z = atanh(r) (|r| clamped to `R_MAX`), the
interval is tanh(z ± t·SE_z), inside [−1, 1] and asymmetric, and the SE reported is the delta-method
(1 − r²)·SE_z, so the interval is a function of the stored (r, SE, df) (`interval(..., scale="fisher_z")`).
When it lies: few chains (the t quantile widens the interval, but the SE itself is noisy: with 4 chains it
is off by ±40% typically) and chains that have not forgotten their common start w* (every chain shares the same
drift, which no between-chain spread can see: the convergence screens catch that).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

BATCHES = 10  # pseudo-chains of a single chain
R_MAX = 1 - 1e-9  # |r| is clamped to this before atanh (atanh(±1) is infinite)
SCALES = ("raw", "fisher_z")

# t_{0.975, ν} for ν = 1..30 (standard tables); beyond, the Cornish-Fisher expansion around z = 1.95996.
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with df degrees of freedom (df >= 1)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = 1.959963984540054, float(df)
    return z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)


def replicates(traces: Tensor) -> Tensor:
    """(chains, draws, ...) -> (groups, draws per group, ...): the chains, or batches of a single chain."""
    if traces.shape[0] > 1:
        return traces
    d = traces.shape[1] // BATCHES * BATCHES
    if d < 2 * BATCHES:
        return traces  # too few draws to batch: no standard error
    return traces[0, :d].reshape(BATCHES, d // BATCHES, *traces.shape[2:])


def fisher_z(r: Tensor) -> Tensor:
    """atanh(r) in float64, |r| clamped to R_MAX."""
    return torch.atanh(r.to(torch.float64).clamp(-R_MAX, R_MAX))


def _dz_dr(r: Tensor) -> Tensor:
    """d atanh(r)/dr = 1/(1 − r²) at the clamped r (float64)."""
    return 1 / (1 - r.to(torch.float64).clamp(-R_MAX, R_MAX).pow(2))


def jackknife(
    estimator: Callable[..., tuple[Tensor, ...]], *traces: Tensor, scales: tuple[str, ...] = ()
) -> list[tuple[Tensor, Tensor, int]]:
    """estimator(*traces) -> estimates (tensors of any shape), traces shaped (chains, draws, ...); scales: per
    estimate "raw" (the default for the ones not named) or "fisher_z" (a correlation).

    Returns per estimate (θ on all chains, its jackknife SE (NaN where it cannot be estimated; for "fisher_z" the
    delta-method (1 − r²)·SE_z), the degrees of freedom G − 1 of its interval). Costs G + 1 estimator calls for G
    chains (or batches)."""
    groups = [replicates(t) for t in traces]
    g = groups[0].shape[0]
    full = estimator(*traces)
    if g < 2:
        return [(theta, torch.full_like(theta, math.nan), 0) for theta in full]
    keep = [torch.tensor([k for k in range(g) if k != c]) for c in range(g)]
    loo = [estimator(*(x[idx] for x in groups)) for idx in keep]  # G × estimates
    out = []
    for e, theta in enumerate(full):
        z = (e < len(scales)) and _scale(scales[e]) == "fisher_z"
        reps = torch.stack([r[e] for r in loo]).to(torch.float64)  # (G, ...)
        reps = fisher_z(reps) if z else reps
        se = ((g - 1) / g * (reps - reps.mean(dim=0)).pow(2).sum(dim=0)).sqrt()
        se = se / _dz_dr(theta) if z else se
        out.append((theta, se.to(theta.dtype), g - 1))
    return out


def _scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {SCALES}")
    return scale


def interval(theta: Tensor, se: Tensor, df: int, scale: str = "raw") -> tuple[Tensor, Tensor]:
    """The 95% interval θ ± t_{0.975, df}·SE (NaN where the SE is); for scale "fisher_z" (θ a correlation, SE
    the delta-method one `jackknife` gives) tanh(atanh(θ) ± t·SE/(1 − θ²)), widened to hold θ itself where the
    clamp (|θ| > R_MAX) or rounding moved it."""
    if df < 1:
        nan = torch.full_like(theta, math.nan)
        return nan, nan
    if _scale(scale) == "fisher_z":
        half = t975(df) * se.to(torch.float64) * _dz_dr(theta)
        z, r = fisher_z(theta), theta.to(torch.float64)
        lo, hi = torch.minimum(torch.tanh(z - half), r), torch.maximum(torch.tanh(z + half), r)
        return lo.to(theta.dtype), hi.to(theta.dtype)
    half = t975(df) * se
    return theta - half, theta + half

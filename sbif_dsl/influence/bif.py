"""Bayesian influence from loss traces (SCIENCE.md §1). Sign convention of the papers: negative = helpful."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _pool(traces: Tensor) -> Tensor:
    """(chains, draws, n) -> (n, N) with N = chains·draws pooled draws, in float64 for stable covariances."""
    c, d = traces.shape[:2]
    return traces.reshape(c * d, -1).T.to(torch.float64)  # (n, N)


def _cov_corr(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Sample Cov (ddof 1) and Pearson Corr between rows of a (n, N) and b (q, N); Corr = 0 where a variance is 0."""
    n_draws = a.shape[1]
    ac = a - a.mean(dim=1, keepdim=True)  # (n, N)
    bc = b - b.mean(dim=1, keepdim=True)  # (q, N)
    cov = ac @ bc.T / (n_draws - 1)  # (n, q)
    sa = ac.pow(2).sum(dim=1).div(n_draws - 1).sqrt()  # (n,)
    sb = bc.pow(2).sum(dim=1).div(n_draws - 1).sqrt()  # (q,)
    denom = sa[:, None] * sb[None, :]
    corr = torch.where(denom > 0, cov / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.zeros_like(cov))
    return cov, corr


def bif_matrices(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """BIF(i, j) = -Cov(l_i, l_j) and the normalized -Corr(l_i, l_j), chains pooled.

    source: (chains, draws, n) traces of the influencing samples; target: (chains, draws, q).
    Returns two (n, q) float64 matrices.
    """
    cov, corr = _cov_corr(_pool(source), _pool(target))
    return -cov, -corr


def loss_kernel(traces: Tensor) -> tuple[Tensor, Tensor]:
    """Loss kernel (arXiv 2509.26537): Cov and Corr of a set's losses with themselves, positive sign."""
    pooled = _pool(traces)
    return _cov_corr(pooled, pooled)


def _class_sums(x: Tensor, masks: Tensor, chunk: int) -> ClassSums:
    """Per-class sums of the centered and of the standardized traces, (classes, N) each, the class sizes, and the
    self-pair terms of every class pair (a token paired with itself: its variance, and 1 for its correlation where
    its variance is nonzero, over the tokens in both classes). x: (N, tokens) pooled draws; masks: (classes,
    tokens). Tokens are standardized in chunks (memory O(draws · (classes + chunk))); a token with zero variance has
    z = 0 (its Corr is defined as 0)."""
    n_draws, n_tokens = x.shape
    k = masks.shape[0]
    f64 = {"dtype": torch.float64, "device": x.device}
    sum_c, sum_z = torch.zeros(k, n_draws, **f64), torch.zeros(k, n_draws, **f64)
    self_cov, self_corr, overlap = torch.zeros(k, k, **f64), torch.zeros(k, k, **f64), torch.zeros(k, k, **f64)
    for s in range(0, n_tokens, chunk):
        xb = x[:, s : s + chunk].to(torch.float64)  # (N, b)
        xc = xb - xb.mean(dim=0, keepdim=True)  # (N, b)
        var = xc.pow(2).sum(dim=0).div(n_draws - 1)  # (b,)
        sd = var.sqrt()
        z = torch.where(sd > 0, xc / sd.clamp_min(torch.finfo(sd.dtype).tiny), torch.zeros_like(xc))  # (N, b)
        m = masks[:, s : s + chunk].to(**f64)  # (classes, b)
        sum_c += m @ xc.T
        sum_z += m @ z.T
        self_cov += (m * var) @ m.T
        self_corr += (m * (sd > 0)) @ m.T
        overlap += m @ m.T
    sizes = masks.sum(dim=1).to(**f64)  # (classes,)
    return ClassSums(sum_c, sum_z, sizes, self_cov, self_corr, overlap)


@dataclass
class ClassSums:
    """What `_class_sums` accumulates in one pass over the tokens."""

    centered: Tensor  # (classes, N) Σ_{a∈A} (l_a − mean)
    standardized: Tensor  # (classes, N) Σ_{a∈A} z_a
    sizes: Tensor  # (classes,) |A|
    self_cov: Tensor  # (classes, classes) Σ_{t∈A∩B} Var(l_t)
    self_corr: Tensor  # (classes, classes) #{t ∈ A∩B: Var(l_t) > 0}
    overlap: Tensor  # (classes, classes) |A∩B|


def class_bif(traces: Tensor, masks: Tensor, chunk: int = 1 << 16) -> tuple[Tensor, Tensor]:
    """Class × class BIF in memory linear in tokens: the block means of the token × token −Cov and −Corr over
    pairs of distinct tokens (a token is not its own influence: −Var(l_a) and −1 would weigh a small class's
    within-class mean by 1/|A|).

    mean_{a∈A, b∈B, a≠b} Corr(l_a, l_b) = (Cov(Σ_a z_a, Σ_b z_b) − #{t ∈ A∩B}) / (|A|·|B| − |A∩B|)  (SCIENCE.md §1),
    z = standardized trace; a class pair without distinct pairs (a one-token class with itself) is NaN.
    traces: (chains, draws, tokens); masks: (classes, tokens) bool. Returns (classes, classes) float64 matrices.
    """
    return class_bif_cross(traces, masks, traces, masks, chunk)


def class_bif_cross(
    source: Tensor, source_masks: Tensor, target: Tensor, target_masks: Tensor, chunk: int = 1 << 16
) -> tuple[Tensor, Tensor]:
    """Source class × target class BIF between two traces over the same draws (e.g. training-token losses and a
    per-token or scalar observable φ): the block means of −Cov(l_a, φ_b) and −Corr(l_a, φ_b), linear in tokens.
    Where the target is the source itself (same traces and masks: `class_bif`), the self-pairs a = b are left out.

    source: (chains, draws, tokens) with source_masks (classes, tokens); target: (chains, draws, items) with
    target_masks (target classes, items). Returns (classes, target classes) float64 matrices."""
    c, d = source.shape[:2]
    src = _class_sums(source.reshape(c * d, -1), source_masks, chunk)
    same = target is source and target_masks is source_masks
    tgt = src if same else _class_sums(target.reshape(c * d, -1), target_masks, chunk)
    cov = src.centered @ tgt.centered.T / (c * d - 1)  # Σ over all token pairs of Cov
    corr = src.standardized @ tgt.standardized.T / (c * d - 1)
    pairs = src.sizes[:, None] * tgt.sizes[None, :]
    if same:
        cov, corr, pairs = cov - src.self_cov, corr - src.self_corr, pairs - src.overlap
    pairs = torch.where(pairs > 0, pairs, torch.full_like(pairs, math.nan))  # no pair: NaN, not 0/0 noise
    return -cov / pairs, -corr / pairs

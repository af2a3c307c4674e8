"""Bayesian influence from loss traces (SCIENCE.md §1). Sign convention of the papers: negative = helpful."""

from __future__ import annotations

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


def _class_sums(x: Tensor, masks: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class sums of the centered and of the standardized traces, (classes, N) each, and the class sizes.
    x: (N, tokens) pooled draws; masks: (classes, tokens). Tokens are standardized in chunks (memory
    O(draws · (classes + chunk))); a token with zero variance has z = 0 (its Corr is defined as 0)."""
    n_draws, n_tokens = x.shape
    k = masks.shape[0]
    sum_c = torch.zeros(k, n_draws, dtype=torch.float64, device=x.device)
    sum_z = torch.zeros(k, n_draws, dtype=torch.float64, device=x.device)
    for s in range(0, n_tokens, chunk):
        xb = x[:, s : s + chunk].to(torch.float64)  # (N, b)
        xc = xb - xb.mean(dim=0, keepdim=True)  # (N, b)
        sd = xc.pow(2).sum(dim=0).div(n_draws - 1).sqrt()  # (b,)
        z = torch.where(sd > 0, xc / sd.clamp_min(torch.finfo(sd.dtype).tiny), torch.zeros_like(xc))  # (N, b)
        m = masks[:, s : s + chunk].to(device=x.device, dtype=torch.float64)  # (classes, b)
        sum_c += m @ xc.T
        sum_z += m @ z.T
    sizes = masks.sum(dim=1).to(device=x.device, dtype=torch.float64).clamp_min(1)  # (classes,)
    return sum_c, sum_z, sizes


def class_bif(traces: Tensor, masks: Tensor, chunk: int = 1 << 16) -> tuple[Tensor, Tensor]:
    """Class × class BIF in memory linear in tokens: the block means of the token × token -Cov and -Corr.

    mean_{a∈A,b∈B} Corr(l_a, l_b) = Cov(Σ_a z_a, Σ_b z_b) / (|A|·|B|)   (SCIENCE.md §1), z = standardized trace.
    traces: (chains, draws, tokens); masks: (classes, tokens) bool. Returns (classes, classes) float64 matrices.
    """
    return class_bif_cross(traces, masks, traces, masks, chunk)


def class_bif_cross(
    source: Tensor, source_masks: Tensor, target: Tensor, target_masks: Tensor, chunk: int = 1 << 16
) -> tuple[Tensor, Tensor]:
    """Source class × target class BIF between two traces over the same draws (e.g. training-token losses and a
    per-token or scalar observable φ): the block means of −Cov(l_a, φ_b) and −Corr(l_a, φ_b), linear in tokens.

    source: (chains, draws, tokens) with source_masks (classes, tokens); target: (chains, draws, items) with
    target_masks (target classes, items). Returns (classes, target classes) float64 matrices."""
    c, d = source.shape[:2]
    cs, zs, ns = _class_sums(source.reshape(c * d, -1), source_masks, chunk)
    same = target is source and target_masks is source_masks
    ct, zt, nt = (cs, zs, ns) if same else _class_sums(target.reshape(c * d, -1), target_masks, chunk)
    norm = ns[:, None] * nt[None, :] * (c * d - 1)
    return -(cs @ ct.T) / norm, -(zs @ zt.T) / norm

"""BIF estimators against brute-force references (float64), and class aggregation in linear memory."""

from __future__ import annotations

import numpy as np
import torch

from sbif_dsl.influence import bif_matrices, class_bif, loss_kernel


def _traces(chains=3, draws=50, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(chains, draws, 2, generator=g, dtype=torch.float64)
    mix = torch.randn(2, n, generator=g, dtype=torch.float64)
    return base @ mix + 0.3 * torch.randn(chains, draws, n, generator=g, dtype=torch.float64)


def test_bif_is_negative_pooled_covariance():
    t = _traces()
    neg_cov, neg_corr = bif_matrices(t, t)
    pooled = t.reshape(-1, t.shape[-1]).numpy()
    assert np.allclose(neg_cov.numpy(), -np.cov(pooled, rowvar=False, ddof=1))
    assert np.allclose(neg_corr.numpy(), -np.corrcoef(pooled, rowvar=False))


def test_zero_variance_gives_zero_correlation():
    t = _traces()
    t[..., 2] = 1.5
    _, neg_corr = bif_matrices(t, t)
    assert torch.all(neg_corr[2] == 0) and torch.all(neg_corr[:, 2] == 0)


def test_loss_kernel_is_positive_sign():
    t = _traces()
    cov, corr = loss_kernel(t)
    neg_cov, neg_corr = bif_matrices(t, t)
    assert torch.allclose(cov, -neg_cov) and torch.allclose(corr, -neg_corr)


def test_class_bif_equals_block_means_of_token_matrix():
    t = _traces(n=40, seed=1)
    t[..., 5] = 0.0  # a zero-variance token
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(4, 40, generator=g) < 0.35  # overlapping classes
    masks[3] = False
    masks[3, :3] = True
    neg_cov, neg_corr = bif_matrices(t, t)  # (40, 40) brute force
    for chunk in (7, 1 << 16):
        cls_cov, cls_corr = class_bif(t, masks, chunk=chunk)
        for a in range(4):
            for b in range(4):
                block = masks[a][:, None] & masks[b][None, :]
                assert torch.allclose(cls_cov[a, b], neg_cov[block].mean(), atol=1e-12)
                assert torch.allclose(cls_corr[a, b], neg_corr[block].mean(), atol=1e-12)


_PEAK_SCRIPT = """
import resource, sys, torch
from sbif_dsl.influence import class_bif
n = int(sys.argv[1])
t = torch.randn(4, 100, n)        # (chains, draws, tokens) float32
masks = torch.rand(8, n) < 0.2    # (classes, tokens)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
class_bif(t, masks, chunk=4096)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def _extra_peak_bytes(n_tokens: int) -> int:
    """Peak memory added by the aggregation itself, in a fresh process (traces already allocated)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n_tokens)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_class_bif_memory_does_not_grow_quadratically():
    """16x more tokens: the token x token matrix would grow 256x (to 34 GB at 65k tokens in float64);
    the chunked aggregation's extra memory stays bounded by its chunk size."""
    small, large = _extra_peak_bytes(4096), _extra_peak_bytes(65536)
    assert large < 512e6, large  # vs 65536**2 * 8 = 34 GB for a materialized token x token matrix
    assert large < 4 * small, (small, large)  # quadratic growth would be 256x; linear at most 16x

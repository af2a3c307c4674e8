"""BIF estimators against brute-force references (float64), and class aggregation in linear memory."""

from __future__ import annotations

import numpy as np
import torch

from sbif_dsl.influence import bif_matrices, class_bif, class_bif_cross, loss_kernel


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
    masks = torch.cat([masks, torch.zeros(1, 40, dtype=torch.bool)])
    masks[4, 7] = True  # a one-token class: no pair of distinct tokens within it
    neg_cov, neg_corr = bif_matrices(t, t)  # (40, 40) brute force
    distinct = ~torch.eye(40, dtype=torch.bool)  # a token is not its own influence: the diagonal is left out
    for chunk in (7, 1 << 16):
        cls_cov, cls_corr = class_bif(t, masks, chunk=chunk)
        for a in range(5):
            for b in range(5):
                block = masks[a][:, None] & masks[b][None, :] & distinct
                if not block.any():
                    assert a == b == 4 and cls_cov[a, b].isnan() and cls_corr[a, b].isnan()
                    continue
                assert torch.allclose(cls_cov[a, b], neg_cov[block].mean(), atol=1e-12)
                assert torch.allclose(cls_corr[a, b], neg_corr[block].mean(), atol=1e-12)
    with_diagonal = neg_corr[masks[3][:, None] & masks[3][None, :]].mean()  # what the blocks held before
    assert cls_corr[3, 3] > with_diagonal + 0.2  # 3 tokens: the −1 self-pairs were a third of the block


def test_class_bif_cross_equals_block_means_of_the_source_target_matrix():
    """Source token classes against a second trace (a per-token observable with its own classes, or a scalar)."""
    t = _traces(n=40, seed=3)
    phi = _traces(n=12, seed=4) + 0.5 * t[..., :12]  # correlated with some source tokens
    phi[..., 2] = 1.0  # a constant target token
    g = torch.Generator().manual_seed(5)
    masks, target_masks = torch.rand(4, 40, generator=g) < 0.35, torch.rand(3, 12, generator=g) < 0.5
    neg_cov, neg_corr = bif_matrices(t, phi)  # (40, 12) brute force
    for chunk in (5, 1 << 16):
        cov, corr = class_bif_cross(t, masks, phi, target_masks, chunk=chunk)
        assert cov.shape == corr.shape == (4, 3)
        for a in range(4):
            for b in range(3):
                block = masks[a][:, None] & target_masks[b][None, :]
                assert torch.allclose(cov[a, b], neg_cov[block].mean(), atol=1e-12)
                assert torch.allclose(corr[a, b], neg_corr[block].mean(), atol=1e-12)
    scalar = phi[..., :1]
    cov, corr = class_bif_cross(t, masks, scalar, torch.ones(1, 1, dtype=torch.bool))
    neg_cov, neg_corr = bif_matrices(t, scalar)
    for a in range(4):
        assert torch.allclose(cov[a, 0], neg_cov[masks[a], 0].mean(), atol=1e-12)
        assert torch.allclose(corr[a, 0], neg_corr[masks[a], 0].mean(), atol=1e-12)
    same = class_bif(t, masks)
    assert all(torch.equal(x, y) for x, y in zip(same, class_bif_cross(t, masks, t, masks), strict=True))


class _LargestTensor:
    """Records the largest new tensor (views excluded) any torch op creates while active (deterministic, unlike RSS)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
                for t in out if isinstance(out, tuple | list) else [out]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:  # not a view
                        outer.largest = max(outer.largest, t.numel())
                return out

        self.largest = 0
        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_class_bif_memory_does_not_grow_quadratically():
    """No intermediate is token x token: the largest tensor is bounded by draws x chunk, whatever the
    number of tokens (a materialized token x token matrix at 65k tokens would be 4.3e9 elements)."""
    largest = {}
    for n_tokens in (4096, 65536):
        t = torch.randn(2, 100, n_tokens)
        masks = torch.rand(8, n_tokens) < 0.2
        with _LargestTensor() as probe:
            class_bif(t, masks, chunk=4096)
        largest[n_tokens] = probe.largest
    assert largest[65536] == largest[4096] <= 200 * 4096 * 8, largest

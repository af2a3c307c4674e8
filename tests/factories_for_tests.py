"""User code for the `kind: python` path: a tiny linear regression, and deliberately broken variants."""

from __future__ import annotations

import torch
from torch import nn

from sbif_dsl.task import Dataset, SampleSet


def squared(outputs, targets):
    return 0.5 * (outputs.squeeze(-1) - targets) ** 2  # (batch,)


def regression(n: int = 12, d: int = 3, noise: float = 0.1, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = x @ w + noise * torch.randn(n, generator=g)
    train = SampleSet(inputs=x, targets=y, names=[f"pt{i:02d}" for i in range(n)])
    probe = SampleSet(inputs=x[:3] * 2, targets=y[:3], names=["probe_a", "probe_b", "probe_c"])
    return Dataset(train=train, loss=squared, queries={"probe": probe})


def linear(dataset: Dataset, bias: bool = False) -> nn.Module:
    return nn.Linear(dataset.train.inputs.shape[1], 1, bias=bias)


def summed_loss(outputs, targets):
    return squared(outputs, targets).sum()  # wrong: a scalar, not per-sample losses


def regression_with_scalar_loss(**kw) -> Dataset:
    ds = regression(**kw)
    return Dataset(train=ds.train, loss=summed_loss, queries=ds.queries)


def not_a_dataset(**options):
    return {"x": [1, 2, 3]}


def ridge(n: int = 40, d: int = 4, n_test: int = 8, noise: float = 0.5, seed: int = 0) -> Dataset:
    """Linear regression with a held-out 'test' set: the LDS ground truth (subset retraining has a closed form)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, d, generator=g)
    w = torch.randn(d, generator=g)
    y = x @ w + noise * torch.randn(n + n_test, generator=g)
    train = SampleSet(inputs=x[:n], targets=y[:n], names=[f"pt{i:02d}" for i in range(n)])
    test = SampleSet(inputs=x[n:], targets=y[n:], names=[f"test{i}" for i in range(n_test)])
    return Dataset(train=train, loss=squared, queries={"test": test})


def prediction(outputs, targets):
    """An observable linear in the weights of `linear`: φ_j = x_jᵀw."""
    return outputs.squeeze(-1)


def squared_prediction(outputs, targets, scale: float = 1.0):
    """An observable quadratic in the weights: φ_j = scale·(x_jᵀw)²."""
    return scale * outputs.squeeze(-1) ** 2


def weight_norm(forward, inputs, targets):
    """A function of the parameters and a batch (call: params): |w|² repeated per sample."""
    w = forward.params["weight"]
    return (w**2).sum().expand(inputs.shape[0])


def summed_prediction(outputs, targets):
    return outputs.sum()  # wrong: a scalar, not one value per sample


def integer_prediction(outputs, targets):
    return (outputs.squeeze(-1) > 0).long()  # wrong: not floating


def strict_hook(outputs, targets, *, power):
    return outputs.squeeze(-1) ** power

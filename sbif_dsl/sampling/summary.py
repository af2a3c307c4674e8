"""What an observable does under the local posterior: the mean and spread of its per-draw value (over the draws
of every chain), the statistic the `observable_summary` stage stores with jackknife-over-chains uncertainty."""

from __future__ import annotations

import torch
from torch import Tensor


def per_draw(trace: Tensor) -> Tensor:
    """(chains, draws, n[, T]) -> (chains, draws): the mean over the recorded values of each draw."""
    return trace.to(torch.float64).flatten(2).mean(dim=2)


def trace_summary(trace: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, sd) of the per-draw mean value over every chain's draws (sd: pooled, ddof 1)."""
    m = per_draw(trace).flatten()
    return m.mean(), m.std()

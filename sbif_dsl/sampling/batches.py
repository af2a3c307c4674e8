"""Each step's random inputs: the minibatch of every chain and the Langevin noise.

Random numbers: one `torch.Generator(seed)` on the parameters' device draws, per step and in this order, the
per-chain epoch permutations (when an epoch starts, minibatch runs only) and the (chains, n_params) noise. They are
drawn for all chains at once whether the chains then run vmapped or in the fallback loop, so both paths see the
same numbers: chain c of a stacked run is the single-chain computation with chain c's noise and minibatches. The
sampler and calibration draw through the same `StepInputs`, so calibration reproduces the sample stage's chains.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def step_samples(batch_size: int | None, n: int) -> int:
    """Samples in one step's minibatch: batch_size, or all n (full batch) for None or a batch as large as the set."""
    return n if batch_size is None else min(batch_size, n)


def minibatch_indices(n: int, batch: int, chains: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Per-chain minibatches without replacement within an epoch: own permutation per chain, drop-last."""
    while True:
        perm = torch.argsort(torch.rand((chains, n), generator=gen, device=gen.device), dim=1, stable=True)
        for k in range(n // batch):
            yield perm[:, k * batch : (k + 1) * batch]  # (chains, batch)


class StepInputs:
    """One step's inputs, targets and noise for every chain, drawn from one seeded generator in the fixed order."""

    def __init__(self, train: tuple[Tensor, Tensor], batch_size: int | None, chains: int, seed: int, device):
        self.train = train
        n = train[0].shape[0]
        batch = step_samples(batch_size, n)
        self.full_batch = batch == n  # every chain sees the whole set: no permutations drawn
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.batches = None if self.full_batch else minibatch_indices(n, batch, chains, self.gen)

    def __call__(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(inputs, targets, noise) for chains at w (chains, n_params): the epoch permutation when one starts,
        then the noise, so any path through the chains sees the same numbers."""
        x, y = self.train
        if self.batches is not None:
            idx = next(self.batches)  # (chains, batch)
            x, y = x[idx], y[idx]  # (chains, batch, ...)
        return (
            x,
            y,
            torch.randn(w.shape, generator=self.gen, device=w.device, dtype=w.dtype),
        )  # noise (chains, n_params)

"""Local learning coefficient from SGLD minibatch losses (SCIENCE.md §3)."""

from __future__ import annotations

import math

from torch import Tensor


def llc_per_chain(batch_losses: Tensor, init_loss: float, nbeta: float) -> Tensor:
    """λ̂ per chain: how far the tempered posterior's mean loss sits above the checkpoint's, in units of 1/nβ.

    batch_losses: (chains, draws) minibatch losses of the draws. Returns (chains,); report mean and std.
    """
    # Lau et al.: λ̂(w*) = nβ · (E_p[L(w)] − L(w*))
    return nbeta * (batch_losses.mean(dim=1) - init_loss)  # (chains,)


def default_nbeta(batch_size: int) -> float:
    """nβ = B / ln B, the field's default inverse temperature for minibatch size B (32 → 9.23)."""
    if batch_size < 2:
        raise ValueError(f"default nbeta needs a batch size >= 2, got {batch_size}")
    return batch_size / math.log(batch_size)

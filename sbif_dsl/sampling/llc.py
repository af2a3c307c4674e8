"""Local learning coefficient from SGLD minibatch losses (SCIENCE.md §3)."""

from __future__ import annotations

from torch import Tensor


def llc_per_chain(batch_losses: Tensor, init_loss: float, nbeta: float) -> Tensor:
    """λ̂ per chain: how far the tempered posterior's mean loss sits above the checkpoint's, in units of 1/nβ.

    batch_losses: (chains, draws) minibatch losses of the draws. Returns (chains,); report mean and std.
    """
    # Lau et al.: λ̂(w*) = nβ · (E_p[L(w)] − L(w*))
    return nbeta * (batch_losses.mean(dim=1) - init_loss)  # (chains,)

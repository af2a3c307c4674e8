"""MALA acceptance of one SGLD step: how far the unadjusted chain is from an exact one at this step size.

MALA acceptance (Roberts & Tweedie 1996; used as an SGLD step-size diagnostic as in devinterp). Treat one SGLD
step w → w' as a proposal from q(w'|w) = N(w − (ε/2)·G∇U(w), εσ²G) for the target exp(−U), with the energy of
the localized tempered posterior (SCIENCE.md §1–2)

    U(w) = nβ·L_batch(w) + (γ/2)·‖w − w*‖² + (λ/2)·‖w‖²          (so ∇U is exactly the SGLD drift)

    α(w → w') = min(1, exp( U(w) − U(w') + log q(w|w') − log q(w'|w) ))

U uses the same minibatch at w and w'. RMSProp-SGLD uses the step's preconditioner G in both directions. α
close to 1 means the unadjusted chain barely differs from an exact (Metropolis-adjusted) one at this step size:
its discretization bias is small. σ = 0 proposes deterministically: α is undefined (NaN). Computed in float64
(the differences of energies cancel most of their digits), with the sampler's own `drift`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .config import SGLDConfig
from .update import drift

F64 = torch.float64


class Point(NamedTuple):
    """Where a chain is, with the minibatch gradient and loss there: what U and ∇U need."""

    w: Tensor  # (chains, n_params)
    grad: Tensor  # (chains, n_params) ∇L_batch(w)
    loss: Tensor  # (chains,) L_batch(w)


def energy(w: Tensor, loss: Tensor, w0: Tensor, cfg: SGLDConfig) -> Tensor:
    """U(w) = nβ·L_batch(w) + (γ/2)‖w − w*‖² + (λ/2)‖w‖², (chains,): the target's negative log density."""
    prior = cfg.gamma / 2 * ((w - w0) ** 2).sum(dim=1) + cfg.weight_decay / 2 * (w**2).sum(dim=1)
    return cfg.nbeta * loss + prior


def log_q(to: Tensor, frm: Tensor, drift_frm: Tensor, G: Tensor | float, eps: float, sigma: float) -> Tensor:
    """log N(to; frm − (ε/2)·G⊙∇U(frm), εσ²G) up to a constant that cancels in the ratio; (chains,)."""
    mean = frm - (eps / 2) * G * drift_frm  # (chains, n_params)
    return -((to - mean) ** 2 / G).sum(dim=1) / (2 * eps * sigma**2)


@torch.no_grad()
def acceptance(here: Point, proposal: Point, w0: Tensor, G: Tensor | float, cfg: SGLDConfig) -> Tensor:
    """α(w → w'), (chains,), for the step from `here` to `proposal` taken with preconditioner G; NaN where it is
    undefined (σ = 0, or a non-finite energy: a diverged chain)."""
    chains = here.w.shape[0]
    if cfg.noise_level == 0:
        return torch.full((chains,), float("nan"), dtype=F64, device=here.w.device)
    w, w_new, w0 = here.w.to(F64), proposal.w.to(F64), w0.to(F64)
    G = G.to(F64) if isinstance(G, Tensor) else G
    u, u_new = energy(w, here.loss.to(F64), w0, cfg), energy(w_new, proposal.loss.to(F64), w0, cfg)
    drift_here = drift(w, here.grad.to(F64), w0, cfg)  # (chains, n_params) ∇U(w)
    drift_new = drift(w_new, proposal.grad.to(F64), w0, cfg)  # ∇U(w')
    log_q_back = log_q(w, w_new, drift_new, G, cfg.eps, cfg.noise_level)  # log q(w|w')
    log_q_forth = log_q(w_new, w, drift_here, G, cfg.eps, cfg.noise_level)  # log q(w'|w)
    log_alpha = (u - u_new) + log_q_back - log_q_forth
    alpha = torch.exp(log_alpha.clamp(max=0.0))  # (chains,)
    return torch.where(torch.isfinite(log_alpha), alpha, torch.full_like(alpha, float("nan")))

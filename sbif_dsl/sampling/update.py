"""One (RMSProp-)SGLD update (SCIENCE.md §2), as devinterp implements it (Welling & Teh 2011):

    Δw = -(ε/2) · G ⊙ [ nβ · ∇L_batch(w) + γ (w - w*) + λ w ]  +  √ε · √G ⊙ N(0, σ²)

The bracket is the drift ∇U(w), the gradient of the energy of the localized tempered posterior exp(−U); G is the
preconditioner (1 for plain SGLD). Every function here is elementwise, for any shape and dtype: the sampler runs
them on (chains, n_params) weights in the model's dtype, and calibration's MALA correction reuses `drift` and
`preconditioner` in float64, so the proposal it corrects is exactly the step the sampler takes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import SGLDConfig


def drift(w: Tensor, grad: Tensor, w0: Tensor, cfg: SGLDConfig) -> Tensor:
    """∇U(w) = nβ·∇L_batch(w) + γ(w − w*) + λw: what the step descends, and what MALA's proposal density needs."""
    return cfg.nbeta * grad + cfg.gamma * (w - w0) + cfg.weight_decay * w


def rmsprop_second_moment(v: Tensor | None, grad: Tensor, alpha: float) -> Tensor:
    """V ← αV + (1−α) g² on the raw minibatch gradient g; V starts at 0 (None) with no bias correction, as in
    devinterp, so the first steps are preconditioned by a small V (a large G)."""
    v = torch.zeros_like(grad) if v is None else v
    return alpha * v + (1 - alpha) * grad**2


def preconditioner(v: Tensor | None, cfg: SGLDConfig) -> Tensor | float:
    """G = 1 / (√V + eps) for RMSProp-SGLD (from the step's updated V), 1 for plain SGLD: it scales the drift by G
    and the noise by √G, so every coordinate moves on its own gradient scale."""
    if cfg.method == "rmsprop_sgld":
        return 1 / (v.sqrt() + cfg.rmsprop_eps)
    return 1.0


def sgld_step(
    w: Tensor, grad: Tensor, w0: Tensor, cfg: SGLDConfig, noise: Tensor, v: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """One (RMSProp-)SGLD update of w (any shape); grad = ∇L_batch(w), noise ~ N(0, 1) shaped like w.

    Returns (w_new, v_new): v is RMSProp's running mean of squared raw gradients (starts at 0, no bias
    correction); plain SGLD passes it through untouched.
    """
    if cfg.method == "rmsprop_sgld":
        v = rmsprop_second_moment(v, grad, cfg.rmsprop_alpha)
    G = preconditioner(v, cfg)
    dw = -(cfg.eps / 2) * G * drift(w, grad, w0, cfg) + math.sqrt(cfg.eps) * G**0.5 * (cfg.noise_level * noise)
    return w + dw, v

"""The parameters as one flat vector, and loss functions of it in the sampler's compute precision.

SGLD moves every parameter the same way, so the chains keep theirs as one (chains, n_params) tensor: one update,
one noise draw and one vmap dimension for the whole model, whatever its structure.

Precision: `SGLDConfig.precision = "bfloat16"` runs the loss function under bfloat16 autocast (matmuls in bfloat16
on CPUs with AVX-512 BF16 or AMX and on GPUs); weights, updates, the init loss, batch losses and traces stay
float32. Same seed, the token × token BIF of the benchmark LM agrees with float32 to Pearson 0.99997.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ParamLossFn = Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]  # (params, inputs, targets) -> [B] | [B, T]


class FlatParams:
    """The parameters as one flat float vector (what SGLD moves) and loss functions of it in a compute precision.

    precision "bfloat16" runs every call of the loss function under bfloat16 autocast and returns float32 losses;
    parameters, updates and everything recorded stay float32. Autocast is thread-local, so it is entered inside
    every call, on whichever thread makes it.
    """

    def __init__(self, params0: dict[str, Tensor], precision: str = "float32"):
        if not params0:
            raise ValueError("params0 is empty")
        first = next(iter(params0.values()))
        self.device, self.dtype = first.device, first.dtype
        if any(p.device != self.device or p.dtype != self.dtype for p in params0.values()):
            raise ValueError("all parameters must share one floating dtype and one device")
        if not self.dtype.is_floating_point:
            raise ValueError("all parameters must share one floating dtype and one device")
        if precision == "bfloat16" and self.dtype != torch.float32:
            raise ValueError(f"precision bfloat16 autocasts float32 parameters; these are {self.dtype}")
        self.low_precision = precision == "bfloat16"
        self.names = list(params0)
        self.shapes = [p.shape for p in params0.values()]
        self.sizes = [p.numel() for p in params0.values()]
        self.w0 = torch.cat([p.detach().reshape(-1) for p in params0.values()])  # (n_params,) w*

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """The named parameters as views of flat weights w (n_params,): what the model's loss function takes."""
        return {k: t.reshape(s) for k, t, s in zip(self.names, w.split(self.sizes), self.shapes, strict=True)}

    def loss_fns(self, fn: ParamLossFn) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
        """(losses, mean_loss): fn's per-sample losses and their mean, as functions of (w, inputs, targets)."""

        def losses(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
            """fn's losses at flat w; autocast entered here, on the calling thread (it is thread-local)."""
            if not self.low_precision:
                return fn(self.unflatten(w), x, y)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = fn(self.unflatten(w), x, y)
            return out.float()

        def mean_loss(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
            """L_batch: the mean of all loss elements (per token too), what the step differentiates."""
            return losses(w, x, y).mean()

        return losses, mean_loss

"""The chains and the Markov kernel that moves them, set up once for both the sampler and calibration.

The chains move together: their weights are one flat (chains, n_params) tensor w, started at w* = w0, and one step
draws every chain's minibatch and noise (`StepInputs`), evaluates ∇L_batch for all chains (`OverChains`: vmapped
or looped) and applies `sgld_step`. `run_chains` and `run_calibration_chains` both start from `start_chains`, so
for the same config and seed (and the same vmap-or-loop choice) they move the same chains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor
from torch.func import grad_and_value

from .batches import StepInputs
from .config import SGLDConfig
from .evaluation import LossesFn, mean_loss_over
from .flat import FlatParams, ParamLossFn
from .over_chains import OverChains, Workers, autograd_grad_and_value
from .update import sgld_step


@dataclass
class Chains:
    """cfg.chains SGLD chains: where they are and what they need to take a step."""

    cfg: SGLDConfig
    w0: Tensor  # (n_params,) w*, the checkpoint
    w: Tensor  # (chains, n_params)
    v: Tensor | None  # (chains, n_params) RMSProp's V; None before the first step and for plain SGLD
    inputs: StepInputs  # w -> one step's (inputs, targets, noise)
    grad_and_loss: OverChains  # (w, inputs, targets) -> ∇L_batch (chains, n_params), L_batch (chains,)
    losses: list[LossesFn]  # per worker thread: per-sample losses of flat weights (tracked evaluation)
    init_loss: float  # L(w*): mean loss over the full training set

    @property
    def full_batch(self) -> bool:
        """Whether every step sees the whole training set (then a proposal's gradient is the next step's)."""
        return self.inputs.full_batch

    def step(self) -> Tensor:
        """One SGLD step of every chain; returns the (chains,) minibatch loss at the pre-step weights."""
        x, y, noise = self.inputs(self.w)
        grad, loss = self.grad_and_loss(self.w, x, y)  # (chains, n_params), (chains,)
        self.w, self.v = sgld_step(self.w, grad, self.w0, self.cfg, noise, self.v)
        return loss


def start_chains(
    flat: FlatParams,
    loss_fns: list[ParamLossFn],
    train: tuple[Tensor, Tensor],
    cfg: SGLDConfig,
    *,
    seed: int,
    vectorize: bool,
    workers: Workers | None = None,
    eval_batch_size: int = 4096,
) -> Chains:
    """cfg.chains chains at w = w*, with their generator, minibatches, gradient function and L(w*).

    loss_fns: one per worker thread (the caller's first, then its replicas); vectorize: whether the step's gradient
    is vmapped over chains (else looped, chain c on worker c mod W).
    """
    fns = [flat.loss_fns(f) for f in loss_fns]  # per worker: (losses, mean_loss) of flat weights
    inputs = StepInputs(train, cfg.batch_size, cfg.chains, seed, flat.device)
    in_dims = (0, None, None) if inputs.full_batch else (0, 0, 0)  # (w, inputs, targets)
    grad_and_loss = OverChains(
        grad_and_value(fns[0][1]), in_dims, cfg.chains, vectorize,
        loop_fns=[autograd_grad_and_value(m) for _, m in fns], workers=workers,
    )  # fmt: skip
    losses = [f for f, _ in fns]
    init_loss = mean_loss_over(losses, flat.w0, *train, eval_batch_size, workers)
    w = flat.w0.expand(cfg.chains, -1).clone()  # (chains, n_params)
    return Chains(cfg, flat.w0, w, None, inputs, grad_and_loss, losses, init_loss)


class Progress:
    """Reports progress(step, total) at most about every 1% of the steps and at the last one: monotone and sparse,
    so a progress bar costs nothing next to a step."""

    def __init__(self, progress: Callable[[int, int], None] | None, total: int):
        self.progress, self.total, self.step = progress, total, 0
        self.every = max(1, math.ceil(total / 100))

    def retotal(self, total: int) -> None:
        """A new total (an adaptive run knows its budget in steps only once the thinning is chosen)."""
        self.total = max(total, self.step)
        self.every = max(1, math.ceil(self.total / 100))

    def tick(self) -> None:
        """One step done."""
        self.step += 1
        if self.progress is not None and (self.step % self.every == 0 or self.step == self.total):
            self.progress(self.step, self.total)

"""Sampler health for `sbif calibrate`: SGLD chains that survive divergence, with a MALA acceptance estimate at
every step (`mala`) and stationarity statistics of the loss trace. Pure math, no I/O, no spec knowledge.

The chains are the ones `run_chains` samples for the same config and seed when it vmaps the step: they start from
the same `start_chains` (same generator, minibatches and L(w*)) and move by the same `sgld_step`, so a grid point
equal to the spec's sampler reproduces the sample stage's minibatch losses. What differs: a chain that turns
non-finite is recorded as diverged (its losses are NaN from then on) instead of failing the run, and every step
also evaluates the gradient and loss at the proposed point, for the MALA acceptance of the step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import SGLDConfig
from .flat import FlatParams, ParamLossFn
from .kernel import Progress, start_chains
from .llc import llc_per_chain
from .mala import Point, acceptance
from .update import preconditioner, sgld_step

# A setting is called stationary when, averaged over chains, the batch loss drifts by at most this many of its
# standard deviations across the second half of the draws, and the two halves' means differ by at most as much.
STATIONARY_MAX_DRIFT = 0.5

F64 = torch.float64


@dataclass
class CalibrationTrace:
    """What one grid point's chains leave for `summarize`: per-draw losses and acceptance, and divergences."""

    batch_losses: Tensor  # (chains, draws) minibatch loss at the pre-step weights of the step making each draw
    acceptance: Tensor  # (chains, draws) MALA acceptance probability, mean over the steps making each draw
    init_loss: float  # mean loss over the full training set at w*
    diverged_at: Tensor  # (chains,) first draw index with a non-finite value, -1 if none (0: during burn-in)
    wall_s: float


def run_calibration_chains(
    loss_fn: ParamLossFn,
    params0: dict[str, Tensor],
    train: tuple[Tensor, Tensor],
    cfg: SGLDConfig,
    *,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationTrace:
    """Sample cfg.chains SGLD chains from w* = params0, recording minibatch losses and MALA acceptance."""
    t_start = time.perf_counter()
    chains = start_chains(FlatParams(params0, cfg.precision), [loss_fn], train, cfg, seed=seed, vectorize=True)
    draws = _PerDraw(cfg)
    clock = Progress(progress, cfg.total_steps)
    w, v, cached = chains.w, chains.v, None  # (chains, n_params)
    for step in range(cfg.total_steps):
        x, y, noise = chains.inputs(w)
        here = Point(w, *(chains.grad_and_loss(w, x, y) if cached is None else cached))
        w_new, v = sgld_step(w, here.grad, chains.w0, cfg, noise, v)
        proposal = Point(w_new, *chains.grad_and_loss(w_new, x, y))  # same batch: U and ∇U at the proposal
        draws.record(step, here.loss, acceptance(here, proposal, chains.w0, preconditioner(v, cfg), cfg))
        w = w_new
        cached = (proposal.grad, proposal.loss) if chains.full_batch else None  # full batch: the next step's batch
        clock.tick()
    return CalibrationTrace(
        draws.batch_losses, draws.acceptance, chains.init_loss, draws.diverged_at(w), time.perf_counter() - t_start
    )


class _PerDraw:
    """The (chains, draws) batch losses and mean acceptance of a calibration run, filled step by step; NaN until a
    draw is written, and after a chain diverges."""

    def __init__(self, cfg: SGLDConfig):
        self.cfg = cfg
        self.batch_losses = torch.full((cfg.chains, cfg.draws), float("nan"), dtype=F64)  # (chains, draws)
        self.acceptance = torch.full((cfg.chains, cfg.draws), float("nan"), dtype=F64)  # (chains, draws)

    def record(self, step: int, loss: Tensor, alpha: Tensor) -> None:
        """Step `step` (burn-in included): its α (chains,) joins the mean over the steps making its draw; the draw's
        last step sets its batch loss (chains,), at that step's pre-step weights as in `run_chains`."""
        k = step - self.cfg.burn_in
        if k < 0:
            return
        every = self.cfg.steps_between_draws
        d, j = divmod(k, every)
        prev = torch.nan_to_num(self.acceptance[:, d], nan=0.0) if j else 0.0
        self.acceptance[:, d] = prev + alpha.cpu() / every
        if j == every - 1:
            self.batch_losses[:, d] = loss.detach().to(F64).cpu()

    def diverged_at(self, w: Tensor) -> Tensor:
        """(chains,) first draw with a non-finite loss or acceptance (or weights after the last draw), -1 if none."""
        bad = ~torch.isfinite(self.batch_losses)  # (chains, draws)
        if self.cfg.noise_level > 0:  # without noise α is NaN by definition
            bad |= ~torch.isfinite(self.acceptance)
        bad |= ~torch.isfinite(w).all(dim=1).cpu()[:, None]  # diverged after the last draw's loss
        return torch.where(bad.any(dim=1), bad.to(torch.int8).argmax(dim=1), torch.full((self.cfg.chains,), -1))


def stationarity(trace: Tensor) -> tuple[Tensor, Tensor]:
    """Per chain: (trend, half_shift) of a (chains, draws) loss trace, both in units of the second half's std.

    trend = OLS slope over the second half × its length: how far the loss drifts across the second half.
    half_shift = mean(second half) − mean(first half): still equilibrating (a climb from L(w*)) shows here.
    A stationary chain with integrated autocorrelation time τ draws has trend ≈ N(0, 12τ/m) for m draws in the half.
    """
    d = trace.shape[1]
    m = d - d // 2
    first, second = trace[:, : d // 2], trace[:, d // 2 :]  # (chains, ·)
    t = torch.arange(m, dtype=trace.dtype) - (m - 1) / 2  # centered draw index
    sd = second.std(dim=1).clamp_min(torch.finfo(trace.dtype).tiny)  # (chains,)
    slope = ((second - second.mean(dim=1, keepdim=True)) * t).sum(dim=1) / (t**2).sum().clamp_min(1)
    trend = slope * (m - 1) / sd
    half_shift = (second.mean(dim=1) - first.mean(dim=1)) / sd if d >= 4 else torch.zeros_like(trend)
    return trend, half_shift


def summarize(res: CalibrationTrace, nbeta: float) -> dict:
    """Per-chain and per-setting numbers for one grid point (diverged chains excluded from the means)."""
    ok = res.diverged_at < 0  # (chains,)
    llc = llc_per_chain(res.batch_losses, res.init_loss, nbeta)  # (chains,)
    trend, half_shift = stationarity(res.batch_losses)
    acc = res.acceptance.mean(dim=1)  # (chains,)

    def mean(x: Tensor) -> float:
        """Mean over the chains that did not diverge (NaN if none): a diverged chain's numbers mean nothing."""
        return float(x[ok].mean()) if ok.any() else math.nan

    llc_std = float(llc[ok].std()) if int(ok.sum()) > 1 else math.nan
    t, h = mean(trend), mean(half_shift)
    return {
        "chains": {
            "llc": llc,
            "mean_loss": res.batch_losses.mean(dim=1),
            "trend": trend,
            "half_shift": half_shift,
            "acceptance": acc,
            "diverged": ~ok,
            "diverged_at": res.diverged_at,
        },
        "llc_mean": mean(llc),
        "llc_std": llc_std,
        "trend": t,
        "half_shift": h,
        "stationary": bool(ok.any()) and abs(t) <= STATIONARY_MAX_DRIFT and abs(h) <= STATIONARY_MAX_DRIFT,
        "acceptance": mean(acc),
        "divergences": int((~ok).sum()),
    }

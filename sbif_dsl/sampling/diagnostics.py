"""Sampler health for `sbif calibrate`: SGLD chains that survive divergence, with a MALA acceptance estimate at
every step and stationarity statistics of the loss trace. Pure math, no I/O, no spec knowledge.

The chains are the ones `run_chains` samples for the same config and seed: the random numbers are drawn in the
same order (minibatch permutations, then noise, per step) and the update is the same `sgld_step`, so a grid point
equal to the spec's sampler reproduces the sample stage's minibatch losses. What differs: a chain that turns
non-finite is recorded as diverged (its losses are NaN from then on) instead of failing the run, and every
step also evaluates the energy and its gradient at the proposed point.

MALA acceptance (Roberts & Tweedie 1996; used as an SGLD step-size diagnostic as in devinterp). Treat one SGLD
step w → w' as a proposal from q(w'|w) = N(w − (ε/2)·G∇U(w), εσ²G) for the target exp(−U), with the energy of
the localized tempered posterior (SCIENCE.md §1–2)

    U(w) = nβ·L_batch(w) + (γ/2)·‖w − w*‖² + (λ/2)·‖w‖²          (so ∇U is exactly the SGLD drift)

    α(w → w') = min(1, exp( U(w) − U(w') + log q(w|w') − log q(w'|w) ))

U uses the same minibatch at w and w'. RMSProp-SGLD uses the step's preconditioner G in both directions. α
close to 1 means the unadjusted chain barely differs from an exact (Metropolis-adjusted) one at this step size:
its discretization bias is small. σ = 0 proposes deterministically: α is undefined (NaN).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad_and_value

from .sgld import (
    FlatParams,
    ParamLossFn,
    SGLDConfig,
    _mean_loss_over,
    _minibatch_indices,
    _OverChains,
    _step_inputs,
    sgld_step,
)

# A setting is called stationary when, averaged over chains, the batch loss drifts by at most this many of its
# standard deviations across the second half of the draws, and the two halves' means differ by at most as much.
STATIONARY_MAX_DRIFT = 0.5


@dataclass
class CalibrationTrace:
    batch_losses: Tensor  # (chains, draws) minibatch loss at the pre-step weights of the step making each draw
    acceptance: Tensor  # (chains, draws) MALA acceptance probability, mean over the steps making each draw
    init_loss: float  # mean loss over the full training set at w*
    diverged_at: Tensor  # (chains,) first draw index with a non-finite value, -1 if none (0: during burn-in)
    wall_s: float


def _log_q(to: Tensor, frm: Tensor, drift_frm: Tensor, G: Tensor | float, eps: float, sigma: float) -> Tensor:
    """log N(to; frm − (ε/2)·G⊙∇U(frm), εσ²G) up to a constant that cancels in the ratio; (chains,)."""
    mean = frm - (eps / 2) * G * drift_frm  # (chains, n_params)
    return -((to - mean) ** 2 / G).sum(dim=1) / (2 * eps * sigma**2)


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
    flat = FlatParams(params0, cfg.precision)
    device = flat.device
    losses, mean_loss = flat.loss_fns(loss_fn)

    C, D = cfg.chains, cfg.draws
    x_train, y_train = train
    n_train = x_train.shape[0]
    full_batch = cfg.batch_size is None or cfg.batch_size >= n_train
    step_grad = _OverChains(grad_and_value(mean_loss), (0, None, None) if full_batch else (0, 0, 0), C, True)

    gen = torch.Generator(device=device).manual_seed(seed)
    batches = None if full_batch else _minibatch_indices(n_train, cfg.batch_size, C, gen)
    w0 = flat.w0  # (n_params,)
    w, v = w0.expand(C, -1).clone(), None  # (chains, n_params)
    init_loss = _mean_loss_over([losses], w0, x_train, y_train, 4096, None)
    w0_64 = w0.to(torch.float64)

    def energy(w: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
        """U(w) in float64 from the batch loss; (chains,)."""
        w64 = w.to(torch.float64)
        quad = cfg.gamma / 2 * ((w64 - w0_64) ** 2).sum(dim=1) + cfg.weight_decay / 2 * (w64**2).sum(dim=1)
        return cfg.nbeta * loss.to(torch.float64) + quad, w64

    batch_losses = torch.full((C, D), float("nan"), dtype=torch.float64)  # (chains, draws)
    acceptance = torch.full((C, D), float("nan"), dtype=torch.float64)  # (chains, draws)
    total, cached = cfg.total_steps, None
    for step in range(total):
        x, y, noise = _step_inputs(train, batches, gen, w)
        grad, loss = cached if cached is not None else step_grad(w, x, y)  # (chains, n_params), (chains,)
        w_new, v = sgld_step(w, grad, w0, cfg, noise, v)
        grad_new, loss_new = step_grad(w_new, x, y)  # same batch: U and ∇U at the proposal
        with torch.no_grad():
            u, w64 = energy(w, loss)
            u_new, w_new64 = energy(w_new, loss_new)
            G = 1.0 if cfg.method == "sgld" else (1 / (v.sqrt() + cfg.rmsprop_eps)).to(torch.float64)
            drift = cfg.nbeta * grad.to(torch.float64) + cfg.gamma * (w64 - w0_64) + cfg.weight_decay * w64
            drift_new = (
                cfg.nbeta * grad_new.to(torch.float64) + cfg.gamma * (w_new64 - w0_64) + cfg.weight_decay * w_new64
            )
            if cfg.noise_level > 0:
                log_alpha = (
                    (u - u_new)
                    + _log_q(w64, w_new64, drift_new, G, cfg.eps, cfg.noise_level)
                    - _log_q(w_new64, w64, drift, G, cfg.eps, cfg.noise_level)
                )
                alpha = torch.exp(log_alpha.clamp(max=0.0))  # (chains,)
                alpha = torch.where(torch.isfinite(log_alpha), alpha, torch.full_like(alpha, float("nan")))
            else:
                alpha = torch.full((C,), float("nan"), dtype=torch.float64, device=device)
        k = step - cfg.burn_in
        if k >= 0:
            d, j = divmod(k, cfg.steps_between_draws)
            prev = torch.nan_to_num(acceptance[:, d], nan=0.0) if j else 0.0
            acceptance[:, d] = prev + alpha.cpu() / cfg.steps_between_draws
            if j == cfg.steps_between_draws - 1:
                batch_losses[:, d] = loss.detach().to(torch.float64).cpu()
        w, cached = w_new, ((grad_new, loss_new) if full_batch else None)
        if progress is not None and (step % max(1, total // 100) == 0 or step == total - 1):
            progress(step + 1, total)

    bad = ~torch.isfinite(batch_losses)  # (chains, draws)
    if cfg.noise_level > 0:
        bad |= ~torch.isfinite(acceptance)
    bad |= ~torch.isfinite(w).all(dim=1).cpu()[:, None]  # diverged after the last draw's loss
    diverged_at = torch.where(bad.any(dim=1), bad.to(torch.int8).argmax(dim=1), torch.full((C,), -1))
    return CalibrationTrace(batch_losses, acceptance, init_loss, diverged_at, time.perf_counter() - t_start)


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
    llc = nbeta * (res.batch_losses.mean(dim=1) - res.init_loss)  # (chains,) Lau et al.: nβ·(E[L] − L(w*))
    trend, half_shift = stationarity(res.batch_losses)
    acc = res.acceptance.mean(dim=1)  # (chains,)

    def mean(x: Tensor) -> float:
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

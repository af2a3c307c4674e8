"""A sampler that converges by itself: windowed warm-up as in Stan and BlackJAX, then draws until the screens pass.

Three phases, all on the chains `run_chains` would sample (same `open_sampler`, same generator), so a run is a
function of its config and seed (bitwise the same draws on the same machine):

1. **Step size** (`eps: auto`): dual averaging of log ε (Hoffman & Gelman 2014, Alg. 5, their constants) towards
   a target MALA acceptance of the SGLD step (`mala`: each step scored as a Metropolis proposal, the same
   minibatch at both ends), over `adapt_steps` steps from w*, capped so that εγ/2 ≤ max_pull (beyond it the
   localization step alone inflates the stationary variance by ≥ 1/(1 − εγ/4)). Then ε is frozen at the averaged
   iterate: no adaptation during the draws that count.
2. **Burn-in** (`draws: auto`): windows of `window` steps at the frozen ε until the minibatch loss over the last
   two windows shows no drift (|Σz/√C| ≤ 2, `screens.drift`) and the second window's mean is within 2 standard
   errors of the first's, at least `burn_in` steps, at most `max_burn_in`. The measured autocorrelation time τ of
   the minibatch loss (steps, from `screens.ess` over the last two windows) sets the thinning: a draw every
   max(steps_between_draws, ⌈τ/2⌉) steps.
3. **Draws** (`draws: auto`): rounds of `check_every` draws until the convergence screens pass under the default
   thresholds (`screens.findings` of kind CONVERGENCE: split-R̂ ≤ 1.01 over the tracked samples, ESS per chain ≥
   100, no drift), or the budget (`max_draws`, `max_seconds`) runs out. An exhausted budget is recorded as the
   run's stop reason and shows in the screens' verdict; a seconds budget makes how many draws a run keeps depend
   on the machine (the draws kept are always a prefix of the same chains).

Geometry findings (the checkpoint is not a local minimum) never stop or extend the draws: more sampling cannot
fix them. What each phase chose, and why, is returned as `ChainResult.schedule` (the `sampler_schedule` view).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import NonFiniteError
from .chains import ChainResult, Sampler, open_sampler
from .config import SGLDConfig
from .flat import ParamLossFn
from .kernel import Progress
from .mala import Point, acceptance
from .update import preconditioner, sgld_step

# Hoffman & Gelman (2014) §3.2: shrinkage towards log(10·ε0), its strength, the early-iteration damping, the decay.
_DA_GAMMA, _DA_T0, _DA_KAPPA = 0.05, 10.0, 0.75
_STATIONARY_Z = 2.0  # burn-in ends when the last two windows drift by at most this many SEs


@dataclass(frozen=True, kw_only=True)
class AutoConfig:
    """The adaptive policy (the spec's `sampler.auto` block, keyed when eps or draws is auto)."""

    eps: bool  # adapt ε (else the config's ε is used as given)
    draws: bool  # measure the burn-in and draw until the screens pass (else the config's schedule)
    target_acceptance: float = 0.9
    max_pull: float = 0.1  # εγ/2 at most this
    adapt_steps: int = 300
    window: int = 100
    max_burn_in: int = 20_000
    check_every: int = 100
    max_draws: int = 4000
    max_seconds: float | None = None


def run_auto(
    loss_fn: ParamLossFn,
    params0: dict[str, Tensor],
    train: tuple[Tensor, Tensor],
    tracked: list[tuple[Tensor, Tensor]],
    cfg: SGLDConfig,
    policy: AutoConfig,
    *,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    **sampler_kw,
) -> ChainResult:
    """`run_chains` with the adaptive schedule of the module docstring. cfg.eps is the starting step size when
    policy.eps (any positive value: it is halved or doubled first to a sensible one); cfg.draws is ignored when
    policy.draws. sampler_kw: `open_sampler`'s keywords (eval_batch_size, vectorize, replicate, workers,
    measures). Progress counts steps against the budget (adapt + max burn-in + max draws)."""
    from .screens import CONVERGENCE, findings, statistics

    t_start = time.perf_counter()
    adapt = policy.adapt_steps if policy.eps else 0
    clock = Progress(progress, adapt + (policy.max_burn_in + policy.max_draws if policy.draws else cfg.total_steps))
    schedule: dict = {
        "eps_policy": "auto" if policy.eps else "fixed",
        "draws_policy": "auto" if policy.draws else "fixed",
        "eps": cfg.eps,
    }
    with open_sampler(loss_fn, params0, train, tracked, cfg, seed=seed, **sampler_kw) as sampler:
        if policy.eps:
            _adapt_step_size(sampler, policy, clock, schedule)
        cfg = sampler.chains.cfg
        if not policy.draws:
            sampler.burn(cfg.burn_in, clock)
            traces, batch_losses = sampler.draw(cfg.draws, clock)
            schedule.update(burn_in=cfg.burn_in, steps_between_draws=cfg.steps_between_draws, draws=cfg.draws,
                            stop="fixed schedule")  # fmt: skip
        else:
            _burn_in(sampler, policy, clock, schedule)
            clock.retotal(clock.step + policy.max_draws * sampler.chains.cfg.steps_between_draws)
            parts: list[tuple[list[Tensor], Tensor]] = []
            rounds: list[dict] = []
            drawn, stop = 0, "budget: max_draws"
            while drawn < policy.max_draws:
                k = min(policy.check_every, policy.max_draws - drawn)
                parts.append(sampler.draw(k, clock, offset=drawn))
                drawn += k
                traces, batch_losses = _joined(parts)
                rows = statistics({f"tracked set {i}": t.numpy() for i, t in enumerate(traces)}, batch_losses.numpy())
                unconverged = [f for f in findings(rows) if f.kind == CONVERGENCE]
                rounds.append({"draws": drawn, "converged": not unconverged,
                               "findings": "; ".join(f.text for f in unconverged)})  # fmt: skip
                if not unconverged:
                    stop = "converged"
                    break
                if policy.max_seconds is not None and time.perf_counter() - t_start > policy.max_seconds:
                    stop = "budget: max_seconds"
                    break
            schedule.update(draws=drawn, stop=stop, rounds=rounds)
    return ChainResult(
        traces, batch_losses, sampler.chains.init_loss, sampler.grad_norm, time.perf_counter() - t_start, schedule
    )


def _joined(parts: list[tuple[list[Tensor], Tensor]]) -> tuple[list[Tensor], Tensor]:
    """The rounds' draws as one run: (traces per set, batch losses), concatenated over draws."""
    traces = [torch.cat([p[0][i] for p in parts], dim=1) for i in range(len(parts[0][0]))]
    return traces, torch.cat([p[1] for p in parts], dim=1)


def max_eps(gamma: float, max_pull: float) -> float:
    """The largest ε with εγ/2 ≤ max_pull (no cap without localization)."""
    return 2 * max_pull / gamma if gamma > 0 else math.inf


def initial_eps(gamma: float, max_pull: float) -> float:
    """Dual averaging's first ε: the cap εγ/2 = max_pull (the largest ε allowed; adaptation only shrinks it from
    there where the loss is steeper than the localization), or 1e-4 without localization."""
    cap = max_eps(gamma, max_pull)
    return cap if math.isfinite(cap) else 1e-4


def _mean_acceptance(sampler: Sampler, eps: float, cached: Point | None) -> tuple[float, Point, Tensor | None]:
    """One step of every chain at ε, scored as a MALA proposal: (mean α over chains, the proposal with its
    gradient and loss, new RMSProp V). cached: the chains' current point with its gradient, when known (full batch:
    the last proposal's). Diverged chains (non-finite α) count as α = 0, so a step size that blows chains up is
    pushed down."""
    ch = sampler.chains
    cfg = dataclasses.replace(ch.cfg, eps=eps)
    x, y, noise = ch.inputs(ch.w)
    here = cached if cached is not None else Point(ch.w, *ch.grad_and_loss(ch.w, x, y))
    w_new, v = sgld_step(ch.w, here.grad, ch.w0, cfg, noise, ch.v)
    proposal = Point(w_new, *ch.grad_and_loss(w_new, x, y))
    alpha = acceptance(here, proposal, ch.w0, preconditioner(v, cfg), cfg)
    return float(torch.nan_to_num(alpha, nan=0.0).mean()), proposal, v


def _adapt_step_size(sampler: Sampler, policy: AutoConfig, clock: Progress, schedule: dict) -> None:
    """Dual averaging of log ε to the target acceptance over policy.adapt_steps steps (the chains move at each
    iterate's ε); ε is then frozen at the averaged iterate, capped at εγ/2 ≤ max_pull."""
    ch = sampler.chains
    cap = max_eps(ch.cfg.gamma, policy.max_pull)
    eps = min(ch.cfg.eps, cap)
    mu = math.log(10 * eps)
    h_bar, log_eps_bar, accepted, cached = 0.0, math.log(eps), [], None
    for t in range(1, policy.adapt_steps + 1):
        alpha, proposal, v = _mean_acceptance(sampler, eps, cached)
        cached = None
        if torch.isfinite(proposal.w).all():
            ch.w, ch.v = proposal.w, v  # a step that blew a chain up is not taken: the chains stay where they were
            cached = proposal if ch.full_batch else None  # full batch: the next step's gradient is this one
        accepted.append(alpha)
        h_bar = (1 - 1 / (t + _DA_T0)) * h_bar + (policy.target_acceptance - alpha) / (t + _DA_T0)
        log_eps = min(mu - math.sqrt(t) / _DA_GAMMA * h_bar, math.log(cap))
        weight = t**-_DA_KAPPA
        log_eps_bar = weight * log_eps + (1 - weight) * log_eps_bar
        eps = math.exp(log_eps)
        clock.tick()
    final = min(math.exp(log_eps_bar), cap)
    ch.cfg = dataclasses.replace(ch.cfg, eps=final)
    tail = accepted[len(accepted) // 2 :]
    schedule.update(eps=final, eps_capped=final >= cap * (1 - 1e-9), adapt_steps=policy.adapt_steps,
                    acceptance=float(np.mean(tail)) if tail else math.nan, pull=final * ch.cfg.gamma / 2)  # fmt: skip


def _burn_in(sampler: Sampler, policy: AutoConfig, clock: Progress, schedule: dict) -> None:
    """Windows of policy.window steps until the minibatch loss of the last two is stationary (module docstring);
    then the thinning from its autocorrelation time."""
    from .screens import combined_drift, drift, ess

    ch = sampler.chains
    steps, windows, verdict = 0, [], "budget: max_burn_in"
    target = max(ch.cfg.burn_in, 2 * policy.window)
    while steps < policy.max_burn_in:
        losses = []
        for _ in range(policy.window):
            losses.append(ch.step().detach().to(torch.float64).cpu())
            clock.tick()
        steps += policy.window
        windows.append(torch.stack(losses, dim=1).numpy())  # (chains, window)
        bad = ~np.isfinite(windows[-1]).all(axis=1)
        if bad.any():  # before the first draw: reported at draw 0
            raise NonFiniteError(int(bad.argmax()), 0)
        if len(windows) < 2 or steps < target:
            continue
        last = np.concatenate(windows[-2:], axis=1)  # (chains, 2·window)
        z, _ = drift(last)
        shift = _half_shift_z(last)
        if abs(combined_drift(z)) <= _STATIONARY_Z and abs(shift) <= _STATIONARY_Z:
            verdict = "stationary"
            break
    last = np.concatenate(windows[-2:], axis=1) if len(windows) >= 2 else windows[-1]
    n_eff = ess(last)
    tau = last.size / n_eff if n_eff and math.isfinite(n_eff) else 1.0  # steps per effective draw
    thin = max(ch.cfg.steps_between_draws, math.ceil(tau / 2))
    ch.cfg = dataclasses.replace(ch.cfg, steps_between_draws=thin)
    schedule.update(burn_in=steps, burn_in_stop=verdict, tau_steps=float(tau), steps_between_draws=thin)


def _half_shift_z(x: np.ndarray) -> float:
    """(mean of the second half − mean of the first) over all chains, in standard errors (autocorrelation-corrected
    by the ESS of the whole stretch): still equilibrating shows as a shift even where a slope is too noisy."""
    from .screens import ess

    d = x.shape[1] // 2
    first, second = x[:, :d], x[:, d : 2 * d]
    n_eff = ess(x)
    if not n_eff or not math.isfinite(n_eff) or not x.std() > 0:
        return 0.0
    se = x.std(ddof=1) * math.sqrt(4 / n_eff)  # difference of two means, each over half the effective draws
    return float((second.mean() - first.mean()) / se)

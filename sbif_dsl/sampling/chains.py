"""The sampler: SGLD chains from a checkpoint, recording every tracked sample's loss at every draw.

`run_chains` reads as the schedule: set up the chains (`kernel`), burn in, then draw in blocks (`buffers`), each
draw recording the minibatch loss of the step that made it and the tracked losses after it (`evaluation`), and
check each block for non-finite values. Python only walks the schedule; the host syncs once per block of draws.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor

from ..errors import NonFiniteError
from .batches import step_samples
from .buffers import DrawBuffers, first_nonfinite
from .config import SGLDConfig
from .evaluation import TrackedEvaluation, mean_grad_norm, probe_tracked
from .flat import FlatParams, ParamLossFn
from .kernel import Chains, Progress, start_chains
from .over_chains import vmap_or_loop, worker_pool


@dataclass
class ChainResult:
    """What a run of chains leaves for the analyses: the traces for the BIF, the batch losses for the LLC."""

    traces: list[Tensor]  # per tracked set: (chains, draws, n_i) or (chains, draws, n_i, T), CPU
    batch_losses: Tensor  # (chains, draws) minibatch loss of the step that made each draw, pre-step w
    init_loss: float  # mean loss over the full training set at w*
    init_grad_norm: float  # ‖∇L(w*)‖ over the full training set (the geometry screen)
    wall_s: float
    schedule: dict | None = None  # what an adaptive run chose and why (`auto.run_auto`); None for a fixed one


@dataclass
class Sampler:
    """Chains set up at w* with everything a schedule needs: the step (`chains`), the tracked evaluation, the
    shapes of the tracked sets and ‖∇L(w*)‖. `run_chains` walks the fixed schedule over it, `auto.run_auto` the
    adaptive one."""

    chains: Chains
    evaluate: TrackedEvaluation
    shapes: list[tuple[int, ...]]
    dtype: object
    device: object
    grad_norm: float

    def burn(self, steps: int, clock: Progress) -> None:
        """steps SGLD steps whose draws are not recorded."""
        for _ in range(steps):
            self.chains.step()
            clock.tick()

    def draw(self, draws: int, clock: Progress, offset: int = 0) -> tuple[list[Tensor], Tensor]:
        """draws more draws, each after chains.cfg.steps_between_draws steps: (traces per tracked set, batch losses),
        on the host. offset: draws recorded before (a NonFiniteError names the draw of the whole run)."""
        buffers = DrawBuffers(self.chains.cfg.chains, draws, self.shapes, self.dtype, self.device)
        for block in buffers.blocks():
            for j in range(block.size):
                for _ in range(self.chains.cfg.steps_between_draws):
                    loss = self.chains.step()  # (chains,) at the pre-step weights
                    clock.tick()
                block.batch_losses[:, j] = loss
                self.evaluate(self.chains.w, block.traces, j)  # at the post-step weights
            bad = first_nonfinite(block.batch_losses, block.traces)
            if bad is not None:
                raise NonFiniteError(bad[0], offset + block.start + bad[1])
            buffers.keep(block)
        return buffers.traces, buffers.batch_losses


@contextmanager
def open_sampler(
    loss_fn: ParamLossFn,
    params0: dict[str, Tensor],
    train: tuple[Tensor, Tensor],
    tracked: list[tuple[Tensor, Tensor]],
    cfg: SGLDConfig,
    *,
    seed: int,
    eval_batch_size: int = 4096,
    vectorize: bool | None = None,
    replicate: Callable[[], ParamLossFn] | None = None,
    workers: int | None = None,
    measures: list | None = None,
) -> Iterator[Sampler]:
    """The chains of `run_chains` (its arguments), set up and ready to step, for as long as the context lasts (it
    holds the worker threads)."""
    if workers is not None and workers > 1 and replicate is None:
        raise ValueError("workers > 1 needs replicate: one model replica per worker thread")
    flat = FlatParams(params0, cfg.precision)
    measures = measures if measures is not None else [None] * len(tracked)
    widths = [getattr(m, "chunk_values", None) for m in measures]  # values per sample that scale activations
    sets = probe_tracked([_measuring(loss_fn, m) for m in measures], flat, tracked, eval_batch_size, widths)
    eval_flops = max((s.flops * s.chunk for s in sets), default=0)  # one evaluation call, per chain
    batch = step_samples(cfg.batch_size, train[0].shape[0])  # samples in one step's minibatch
    step_vec, eval_vec, n_workers = vmap_or_loop(
        vectorize, loss_fn, flat, train, batch, eval_flops, cfg.chains, replicas=replicate is not None, workers=workers
    )
    with worker_pool(n_workers) as pool:
        replicas = [replicate() for _ in range(n_workers - 1)]  # one model per extra worker thread
        chains = start_chains(flat, [loss_fn, *replicas], train, cfg, seed=seed, vectorize=step_vec, workers=pool,
                              eval_batch_size=eval_batch_size)  # fmt: skip
        set_fns = [
            chains.losses if m is None else [flat.loss_fns(_measuring(f, m))[0] for f in [loss_fn, *replicas]]
            for m in measures
        ]  # per set, per worker
        evaluate = TrackedEvaluation(sets, set_fns, cfg.chains, eval_vec, pool)
        grad_norm = mean_grad_norm(chains.losses[0], flat.w0, *train, batch)
        yield Sampler(chains, evaluate, [s.shape for s in sets], flat.dtype, flat.device, grad_norm)


def run_chains(
    loss_fn: ParamLossFn,
    params0: dict[str, Tensor],
    train: tuple[Tensor, Tensor],
    tracked: list[tuple[Tensor, Tensor]],
    cfg: SGLDConfig,
    *,
    seed: int,
    eval_batch_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    vectorize: bool | None = None,
    replicate: Callable[[], ParamLossFn] | None = None,
    workers: int | None = None,
    measures: list | None = None,
) -> ChainResult:
    """Sample cfg.chains SGLD chains from w* = params0 and record every tracked sample's loss at every draw.

    loss_fn(params, inputs, targets) -> [B] or [B, T] per-sample (per-token) losses for one set of params;
    the minibatch loss L_batch is the mean of all its elements. Schedule: burn_in steps, then a draw after
    every steps_between_draws steps, with the tracked losses evaluated at the post-step weights. Tracked sets
    are evaluated without gradients in calls of at most eval_batch_size samples and a bounded number of loss
    elements per chain (`evaluation`). vectorize: True = vmap over chains, False = loop over chains (the
    automatic fallback when a model cannot be vmapped), None = choose per call site (`over_chains`).
    cfg.precision "bfloat16" runs every loss_fn call under bfloat16 autocast (parameters, updates, init loss,
    batch losses and traces stay float32; the loss_fn decides what autocast may touch). replicate() -> an
    independent loss_fn (its own model replica) lets looped chains run on `workers` CPU threads (None: as many
    as torch's intra-op threads, at most one per chain); chain c always runs on worker c mod W.
    measures: per tracked set, None (its losses) or what loss_fn(params, x, y, measure=m) records instead (an
    observable's values, `observables.tracking`); loss_fn and its replicas must then take that keyword.
    Raises NonFiniteError naming the first chain/draw at which a batch or tracked loss is NaN/Inf.
    """
    t_start = time.perf_counter()
    with open_sampler(
        loss_fn, params0, train, tracked, cfg, seed=seed, eval_batch_size=eval_batch_size, vectorize=vectorize,
        replicate=replicate, workers=workers, measures=measures,
    ) as sampler:  # fmt: skip
        clock = Progress(progress, cfg.total_steps)
        sampler.burn(cfg.burn_in, clock)
        traces, batch_losses = sampler.draw(cfg.draws, clock)
    return ChainResult(traces, batch_losses, sampler.chains.init_loss, sampler.grad_norm, time.perf_counter() - t_start)


def _measuring(loss_fn: ParamLossFn, measure) -> ParamLossFn:
    """loss_fn, or the function recording a set's observables instead of its losses."""
    return loss_fn if measure is None else functools.partial(loss_fn, measure=measure)

"""Losses without gradients, in bounded chunks: L(w*) over the training set, and the tracked sets at every draw.

A chunk holds at most eval_batch_size samples and _EVAL_ELEMENTS loss elements per chain (a language model's
activations grow with tokens, not samples); a vmapped call covers all chains, so its chunk is divided among them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .flat import FlatParams, ParamLossFn
from .over_chains import OverChains, Workers, forward_flops, run_each

_EVAL_ELEMENTS = 1 << 14  # loss elements (samples × tokens) per evaluation call and chain: bounds activations

LossesFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (w, inputs, targets) -> [B] | [B, T]


@torch.no_grad()
def mean_loss_over(loss_fns: list[LossesFn], w: Tensor, x: Tensor, y: Tensor, batch: int, workers: Workers | None):
    """Mean over all elements of the losses of the whole set at flat weights w (n_params,), in batches of at most
    `batch` samples and _EVAL_ELEMENTS loss elements, spread over the workers (one loss function each); summed in
    float64 in batch order, so the result does not depend on how many workers there are."""
    per_sample = max(1, loss_fns[0](w, x[:1], y[:1]).numel()) if x.shape[0] else 1
    batch = max(1, min(batch, _EVAL_ELEMENTS // per_sample))
    starts = list(range(0, x.shape[0], batch))
    sums: list[Tensor] = [torch.zeros((), dtype=torch.float64, device=x.device)] * len(starts)
    counts = [0] * len(starts)

    def part(i: int) -> None:
        """Worker i's batches i, i + W, ...; each batch's sum goes to its own slot, added up in batch order later."""
        for j in range(i, len(starts), len(loss_fns)):
            s = starts[j]
            losses = loss_fns[i](w, x[s : s + batch], y[s : s + batch])
            sums[j], counts[j] = losses.to(torch.float64).sum(), losses.numel()

    run_each(workers, part, len(loss_fns))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for t in sums:
        total += t
    return float(total / max(sum(counts), 1))


def mean_grad_norm(loss_fn: LossesFn, w: Tensor, x: Tensor, y: Tensor, batch: int) -> float:
    """‖∇L(w)‖ of the mean over all loss elements of the whole set, in batches of at most `batch` samples (the
    step's minibatch, which already fits a backward pass), summed in float64: the geometry screen's gradient at w*."""
    total = torch.zeros_like(w, dtype=torch.float64)
    count = 0
    for s in range(0, x.shape[0], max(1, batch)):
        wg = w.detach().requires_grad_(True)
        losses = loss_fn(wg, x[s : s + batch], y[s : s + batch])
        (g,) = torch.autograd.grad(losses.sum(), wg)
        total += g.to(torch.float64)
        count += losses.numel()
    return float(total.norm() / max(count, 1))


@dataclass(frozen=True)
class TrackedSet:
    """A set whose every loss is recorded at every draw, with what one probe sample told about it."""

    x: Tensor  # (n, ...)
    y: Tensor
    tail: tuple[int, ...]  # one sample's loss shape: () per sample, (T,) per token
    chunk: int  # samples per evaluation call and chain
    flops: int  # forward FLOPs of one sample

    @property
    def shape(self) -> tuple[int, ...]:
        """The set's losses at one draw: (n,) or (n, T)."""
        return (self.x.shape[0], *self.tail)


def probe_tracked(
    loss_fns: list[ParamLossFn],
    flat: FlatParams,
    tracked: list[tuple[Tensor, Tensor]],
    eval_batch_size: int,
    chunk_values: list[int | None] | None = None,
) -> list[TrackedSet]:
    """One probe sample per set at w* (loss_fns: one per set): the shape to allocate, the chunk size, the FLOPs to
    decide vmap-or-loop. chunk_values: per set, the values per sample that scale its activations when that is not
    its recorded width (several observables of one forward pass; None: the width)."""
    p0 = flat.unflatten(flat.w0)
    sets = []
    for k, (loss_fn, (x, y)) in enumerate(zip(loss_fns, tracked, strict=True)):
        out, flops = forward_flops(loss_fn, p0, x[:1], y[:1])
        tail = tuple(out.shape[1:])
        values = (chunk_values[k] if chunk_values else None) or math.prod(tail)
        chunk = max(1, min(eval_batch_size, _EVAL_ELEMENTS // max(1, values)))
        sets.append(TrackedSet(x, y, tail, chunk, flops))
    return sets


class TrackedEvaluation:
    """Every tracked sample's values at the chains' current weights, written into a draw of a block of the traces.

    set_fns: per set, one function of flat weights per worker thread (a set's losses, or its observables' values
    computed in one forward pass: `observables.tracking`)."""

    def __init__(
        self,
        sets: list[TrackedSet],
        set_fns: list[list[LossesFn]],
        chains: int,
        vectorize: bool,
        workers: Workers | None,
    ):
        self.calls = [
            OverChains(f[0], (0, None, None), chains, vectorize, loop_fns=f, workers=workers) for f in set_fns
        ]
        self.slices = []  # per set: (start, inputs, targets) of each call
        for s in sets:
            k = max(1, s.chunk // chains) if vectorize else s.chunk  # one vmapped call covers all chains
            self.slices.append([(i, s.x[i : i + k], s.y[i : i + k]) for i in range(0, s.x.shape[0], k)])

    @torch.no_grad()
    def __call__(self, w: Tensor, traces: list[Tensor], j: int) -> None:
        """Losses at w (chains, n_params) into draw j of each set's (chains, draws, n[, T]) block."""
        for buf, call, slices in zip(traces, self.calls, self.slices, strict=True):
            for i, xs, ys in slices:
                call(w, xs, ys, out=buf[:, j, i : i + xs.shape[0]])  # (chains, b[, T])

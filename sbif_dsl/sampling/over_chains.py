"""A function of one chain's flat weights, run for all chains at once: vmapped, or looped on worker threads.

Vectorized or looped: vmap wins where per-call overhead dominates (small models, accelerators). On a CPU, once a
call carries tens of MFLOPs per chain, or where vmap has no batching rule for an op (fused attention) and loops
over the chains internally anyway, a plain loop over chains with large batches and ordinary autograd is faster
(measured in benchmarks/README.md). `vmap_or_loop` picks per call site (step, tracked evaluation) from a FLOP
count of one probe sample; the choice depends only on the model and the shapes, so a run stays reproducible.
Both paths see the same random numbers (drawn for all chains before the call) and do the same math.

Worker threads: looped chains on a CPU run side by side on worker threads, one model replica each (`replicate`),
each with an equal share of torch's intra-op threads: a small model uses extra intra-op threads poorly, separate
chains on separate cores scale almost linearly. Chain c always runs on worker c mod W, and with one intra-op
thread per worker the traces are bitwise those of a single thread.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils.flop_counter import FlopCounterMode

from .flat import FlatParams, ParamLossFn

_LOOP_MIN_FLOPS = 1 << 26  # on CPU, a call of at least this many FLOPs per chain runs as a loop over chains


class OverChains:
    """fn vmapped over the leading chain dim of the arguments whose in_dim is 0, or looped over the chains.

    vectorize=False runs a loop function once per chain and stacks the outputs: the same math and the same random
    numbers (drawn for all chains before the call). It is also the fallback when a model cannot be vmapped
    (in-place buffer updates, data-dependent control flow, `.item()`); the switch warns once. With `out`, results
    are written straight into that (chains, ...) tensor instead of being stacked.

    Looped chains can run side by side on CPU cores: `workers` gives one loop function per worker thread (each over
    its own model replica), and chain c always runs on worker c mod W, so results do not depend on scheduling.
    """

    def __init__(
        self,
        fn: Callable,
        in_dims: tuple,
        chains: int,
        vectorize: bool,
        loop_fns: list[Callable] | None = None,
        workers: Workers | None = None,
    ):
        self.fn, self.in_dims, self.chains, self.vectorize = fn, in_dims, chains, vectorize
        self.loop_fns = loop_fns or [fn]
        self.workers = workers
        self._vmapped = vmap(fn, in_dims=in_dims)

    def __call__(self, *args: Tensor, out: Tensor | None = None):
        """fn for every chain: vmapped while that works, else (from the first failure on) looped."""
        if self.vectorize:
            try:
                res = self._vmapped(*args)
            except (RuntimeError, NotImplementedError) as err:
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                warnings.warn(
                    f"vmap over chains failed ({first_line}); running chains one by one (same math, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.vectorize = False
            else:
                return res if out is None else out.copy_(res)
        return self._loop(args, out)

    def _loop(self, args: tuple[Tensor, ...], out: Tensor | None):
        """Chain by chain, chain c on loop function c mod W; stacked, or written into out."""
        results: list = [None] * self.chains
        n = len(self.loop_fns)

        def chains_of(i: int) -> None:
            """Loop function i's share: chains i, i + W, ... (a fixed assignment, so results ignore scheduling)."""
            for c in range(i, self.chains, n):
                r = self.loop_fns[i](*self._chain_args(args, c))
                if out is None:
                    results[c] = r
                else:
                    out[c] = r

        run_each(self.workers, chains_of, n)
        if out is not None:
            return out
        if isinstance(results[0], tuple):
            return tuple(torch.stack(parts) for parts in zip(*results, strict=True))
        return torch.stack(results)

    def _chain_args(self, args: tuple[Tensor, ...], c: int) -> list[Tensor]:
        """Chain c's slice of the batched arguments (in_dim 0); shared arguments as they are."""
        return [a[c] if d == 0 else a for a, d in zip(args, self.in_dims, strict=True)]


class Workers:
    """Threads that run looped chains side by side on a CPU, each with a share of torch's intra-op threads.

    Small models use a CPU core badly through intra-op threads (short GEMMs, barriers); independent chains on
    separate cores scale almost linearly (benchmarks/README.md). Torch releases the GIL inside its kernels.
    Grad mode and autocast are thread-local in torch: callers' grad mode is carried into the workers.
    """

    def __init__(self, n: int):
        self._before = torch.get_num_threads()
        torch.set_num_threads(max(1, self._before // n))
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sbif-chain")

    def map(self, fn: Callable[[int], None], n: int) -> None:
        """fn(0), ..., fn(n-1) on the threads, in the caller's grad mode; re-raises the first worker's error."""
        grad = torch.is_grad_enabled()

        def task(i: int) -> None:
            """fn(i) in the caller's grad mode, which a new thread does not inherit."""
            with torch.set_grad_enabled(grad):
                fn(i)

        for f in [self._pool.submit(task, i) for i in range(n)]:
            f.result()  # re-raises a worker's exception here

    def close(self) -> None:
        """Joins the threads and gives torch its intra-op threads back."""
        self._pool.shutdown(wait=True)
        torch.set_num_threads(self._before)


@contextmanager
def worker_pool(n: int) -> Iterator[Workers | None]:
    """n worker threads for the duration of a run (None for one: the caller's thread); always given back."""
    if n <= 1:
        yield None
        return
    pool = Workers(n)
    try:
        yield pool
    finally:
        pool.close()


def run_each(workers: Workers | None, fn: Callable[[int], None], n: int) -> None:
    """fn(0), ..., fn(n-1): on the worker threads when there are several, else in this thread."""
    if workers is None or n == 1:
        for i in range(n):
            fn(i)
    else:
        workers.map(fn, n)


def autograd_grad_and_value(fn: Callable[..., Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
    """grad_and_value(fn) w.r.t. the first argument with plain autograd: for one chain outside vmap it skips
    torch.func's per-op wrapping (~10% of a small transformer's step, measured)."""

    def grad_and_value_(w: Tensor, *args: Tensor) -> tuple[Tensor, Tensor]:
        """(∇_w fn, fn) at w, detached: the caller's grad mode (no_grad in evaluation) must not switch it off."""
        with torch.enable_grad():
            w = w.detach().requires_grad_(True)
            value = fn(w, *args)
            (grad,) = torch.autograd.grad(value, w)
        return grad, value.detach()

    return grad_and_value_


def vmap_falls_back(probe: Callable[[], object]) -> bool:
    """Whether a vmapped probe call hits an op without a batching rule, which vmap then runs as a per-chain loop
    (its "batching rule" performance warning); an error counts as no: the call site tries vmap and falls back."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.no_grad():
                probe()
        except (RuntimeError, NotImplementedError):
            return False
    return any("batching rule" in str(w.message) for w in caught)


def forward_flops(loss_fn: ParamLossFn, params: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, int]:
    """loss_fn's output for one sample and the FLOPs (matmuls, convolutions, attention) that forward took."""
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            out = loss_fn(params, x, y)
        return out, counter.get_total_flops()
    except Exception:  # a model the counter cannot trace: count nothing, decide by the probe alone
        with torch.no_grad():
            return loss_fn(params, x, y), 0


def vmap_or_loop(
    vectorize: bool | None,
    loss_fn: ParamLossFn,
    flat: FlatParams,
    train: tuple[Tensor, Tensor],
    step_samples: int,
    eval_flops: int,
    chains: int,
    *,
    replicas: bool,
    workers: int | None,
) -> tuple[bool, bool, int]:
    """(step_vec, eval_vec, n_workers): whether the SGLD step and the tracked evaluation run vmapped, and how many
    worker threads run the looped ones (see the module docstring).

    vectorize True/False forces both call sites; None vmaps unless, on a CPU, a call is compute-bound (forward +
    backward of step_samples samples, or eval_flops for one evaluation call, per chain) or vmap would loop
    internally anyway. Workers need model replicas: `workers` of them (None: torch's intra-op threads), at most one
    per chain, and only on a CPU where something loops.
    """
    device = flat.device
    step_vec = eval_vec = vectorize
    if vectorize is None:
        x, y = train[0][:1], train[1][:1]  # one probe sample
        _, train_flops = forward_flops(loss_fn, flat.unflatten(flat.w0), x, y)
        step_flops = 3 * train_flops * step_samples  # forward + backward ≈ 3 forwards, per chain
        losses, _ = flat.loss_fns(loss_fn)
        pair = flat.w0.expand(2, -1)  # two identical "chains" for the probe
        loops = device.type == "cpu" and vmap_falls_back(lambda: vmap(losses, in_dims=(0, None, None))(pair, x, y))
        step_vec = device.type != "cpu" or not (loops or step_flops >= _LOOP_MIN_FLOPS)
        eval_vec = device.type != "cpu" or not (loops or eval_flops >= _LOOP_MIN_FLOPS)
    n_workers = 1
    if replicas and device.type == "cpu" and not (step_vec and eval_vec):
        n_workers = max(1, min(chains, torch.get_num_threads() if workers is None else workers))
    return step_vec, eval_vec, n_workers

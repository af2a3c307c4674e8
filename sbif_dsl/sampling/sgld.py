"""SGLD and RMSProp-SGLD over stacked chains (SCIENCE.md §2): pure math, no I/O, no spec knowledge.

The chains move together. Their parameters are one flat (chains, n_params) tensor, the gradients come
from `torch.func.vmap` over `grad_and_value` of the mean minibatch loss, and the losses of the tracked
samples are written at every draw into preallocated device buffers. Python only walks the schedule; the host
syncs once per block of draws (the finiteness check), never per step.

Random numbers: one `torch.Generator(seed)` on the parameters' device draws, per step and in this order,
the per-chain epoch permutations (when an epoch starts, minibatch runs only) and the (chains, n_params)
noise. They are drawn for all chains at once whether the chains then run vmapped or in the fallback loop,
so both paths see the same numbers: chain c of a stacked run is the single-chain computation with chain c's
noise and minibatches.

Vectorized or looped: vmap wins where per-call overhead dominates (small models, accelerators). On a CPU, once a
call carries tens of MFLOPs per chain, or where vmap has no batching rule for an op (fused attention) and loops
over the chains internally anyway, a plain loop over chains with large batches and ordinary autograd is faster
(measured in benchmarks/README.md). `vectorize=None` picks per call site (step, tracked evaluation) from a FLOP
count of one probe sample; the choice depends only on the model and the shapes, so a run stays reproducible.

Looped chains on a CPU run side by side on worker threads, one model replica each (`replicate`), each with an
equal share of torch's intra-op threads: a small model uses extra intra-op threads poorly, separate chains on
separate cores scale almost linearly. Chain c always runs on worker c mod W, and with one intra-op thread per
worker the traces are bitwise those of a single thread.

Precision: `SGLDConfig.precision = "bfloat16"` runs the loss function under bfloat16 autocast (matmuls in
bfloat16 on CPUs with AVX-512 BF16 or AMX and on GPUs); weights, updates, the init loss, batch losses and traces
stay float32. Same seed, the token × token BIF of the benchmark LM agrees with float32 to Pearson 0.99997.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils.flop_counter import FlopCounterMode

from ..errors import NonFiniteError

ParamLossFn = Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]

_BLOCK_BYTES = 256 * 2**20  # device memory for one block of draws before it is copied to the host
_MAX_BLOCK_DRAWS = 64  # also the cadence of the finiteness check: one host sync per block
_EVAL_ELEMENTS = 1 << 14  # loss elements (samples × tokens) per evaluation call and chain: bounds activations
_LOOP_MIN_FLOPS = 1 << 26  # on CPU, a call of at least this many FLOPs per chain runs as a loop over chains


@dataclass(frozen=True, kw_only=True)
class SGLDConfig:
    """Sampler hyperparameters, named as in SCIENCE.md §2."""

    method: Literal["sgld", "rmsprop_sgld"] = "sgld"
    eps: float  # step size ε
    gamma: float  # localization γ
    nbeta: float  # inverse temperature nβ
    chains: int
    draws: int
    burn_in: int = 0
    steps_between_draws: int = 1
    batch_size: int | None = None  # None = full batch
    noise_level: float = 1.0  # σ
    weight_decay: float = 0.0  # λ
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.1
    precision: Literal["float32", "bfloat16"] = "float32"  # compute precision of the loss function's forward

    def __post_init__(self) -> None:
        if self.method not in ("sgld", "rmsprop_sgld"):
            raise ValueError(f"unknown SGLD method {self.method!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"unknown precision {self.precision!r}")
        if self.chains < 1 or self.draws < 1 or self.burn_in < 0 or self.steps_between_draws < 1:
            raise ValueError("need chains >= 1, draws >= 1, burn_in >= 0, steps_between_draws >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None (full batch)")

    @property
    def total_steps(self) -> int:
        return self.burn_in + self.draws * self.steps_between_draws


def sgld_step(
    w: Tensor, grad: Tensor, w0: Tensor, cfg: SGLDConfig, noise: Tensor, v: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """One (RMSProp-)SGLD update of w (any shape); grad = ∇L_batch(w), noise ~ N(0, 1) shaped like w.

    Returns (w_new, v_new): v is RMSProp's running mean of squared raw gradients (starts at 0, no bias
    correction); plain SGLD passes it through untouched.
    """
    if cfg.method == "rmsprop_sgld":
        v = torch.zeros_like(w) if v is None else v
        v = cfg.rmsprop_alpha * v + (1 - cfg.rmsprop_alpha) * grad**2  # V ← αV + (1−α) g²
        G = 1 / (v.sqrt() + cfg.rmsprop_eps)  # preconditioner
    else:
        G = 1.0
    # Welling & Teh 2011, as devinterp implements it: Δw = -(ε/2)·G⊙[nβ∇L + γ(w−w*) + λw] + √ε·√G⊙N(0, σ²)
    drift = cfg.nbeta * grad + cfg.gamma * (w - w0) + cfg.weight_decay * w
    dw = -(cfg.eps / 2) * G * drift + math.sqrt(cfg.eps) * G**0.5 * (cfg.noise_level * noise)
    return w + dw, v


@dataclass
class ChainResult:
    traces: list[Tensor]  # per tracked set: (chains, draws, n_i) or (chains, draws, n_i, T), CPU
    batch_losses: Tensor  # (chains, draws) minibatch loss of the step that made each draw, pre-step w
    init_loss: float  # mean loss over the full training set at w*
    wall_s: float


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
        self.w0 = torch.cat([p.detach().reshape(-1) for p in params0.values()])  # (n_params,)

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        return {k: t.reshape(s) for k, t, s in zip(self.names, w.split(self.sizes), self.shapes, strict=True)}

    def loss_fns(self, fn: ParamLossFn) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
        """(losses, mean_loss): fn's per-sample losses and their mean, as functions of (w, inputs, targets)."""

        def losses(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
            if not self.low_precision:
                return fn(self.unflatten(w), x, y)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = fn(self.unflatten(w), x, y)
            return out.float()

        def mean_loss(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return losses(w, x, y).mean()

        return losses, mean_loss


class _OverChains:
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
        workers: _Workers | None = None,
    ):
        self.fn, self.in_dims, self.chains, self.vectorize = fn, in_dims, chains, vectorize
        self.loop_fns = loop_fns or [fn]
        self.workers = workers
        self._vmapped = vmap(fn, in_dims=in_dims)

    def __call__(self, *args: Tensor, out: Tensor | None = None):
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
        results: list = [None] * self.chains
        n = len(self.loop_fns)

        def chains_of(i: int) -> None:
            for c in range(i, self.chains, n):
                r = self.loop_fns[i](*self._chain_args(args, c))
                if out is None:
                    results[c] = r
                else:
                    out[c] = r

        _run_each(self.workers, chains_of, n)
        if out is not None:
            return out
        if isinstance(results[0], tuple):
            return tuple(torch.stack(parts) for parts in zip(*results, strict=True))
        return torch.stack(results)

    def _chain_args(self, args: tuple[Tensor, ...], c: int) -> list[Tensor]:
        return [a[c] if d == 0 else a for a, d in zip(args, self.in_dims, strict=True)]


class _Workers:
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
        grad = torch.is_grad_enabled()

        def task(i: int) -> None:
            with torch.set_grad_enabled(grad):
                fn(i)

        for f in [self._pool.submit(task, i) for i in range(n)]:
            f.result()  # re-raises a worker's exception here

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        torch.set_num_threads(self._before)


def _run_each(workers: _Workers | None, fn: Callable[[int], None], n: int) -> None:
    """fn(0), ..., fn(n-1): on the worker threads when there are several, else in this thread."""
    if workers is None or n == 1:
        for i in range(n):
            fn(i)
    else:
        workers.map(fn, n)


def _autograd_grad_and_value(fn: Callable[..., Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
    """grad_and_value(fn) w.r.t. the first argument with plain autograd: for one chain outside vmap it skips
    torch.func's per-op wrapping (~10% of a small transformer's step, measured)."""

    def grad_and_value_(w: Tensor, *args: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            w = w.detach().requires_grad_(True)
            value = fn(w, *args)
            (grad,) = torch.autograd.grad(value, w)
        return grad, value.detach()

    return grad_and_value_


def _vmap_falls_back(probe: Callable[[], object]) -> bool:
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


def _forward_flops(loss_fn: ParamLossFn, params: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, int]:
    """loss_fn's output for one sample and the FLOPs (matmuls, convolutions, attention) that forward took."""
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            out = loss_fn(params, x, y)
        return out, counter.get_total_flops()
    except Exception:  # a model the counter cannot trace: count nothing, decide by the probe alone
        with torch.no_grad():
            return loss_fn(params, x, y), 0


def _minibatch_indices(n: int, batch: int, chains: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Per-chain minibatches without replacement within an epoch: own permutation per chain, drop-last."""
    while True:
        perm = torch.argsort(torch.rand((chains, n), generator=gen, device=gen.device), dim=1, stable=True)
        for k in range(n // batch):
            yield perm[:, k * batch : (k + 1) * batch]  # (chains, batch)


def _step_inputs(
    train: tuple[Tensor, Tensor], batches: Iterator[Tensor] | None, gen: torch.Generator, w: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One step's inputs, targets and (chains, n_params) noise, drawn in the fixed order (the epoch permutation
    when one starts, then the noise) that lets calibration reproduce the sample stage's chains bitwise."""
    x, y = train
    if batches is not None:
        idx = next(batches)  # (chains, batch)
        x, y = x[idx], y[idx]  # (chains, batch, ...)
    return x, y, torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)


def _first_nonfinite(batch_losses: Tensor, traces: list[Tensor]) -> tuple[int, int] | None:
    """(chain, draw) of the earliest draw where any chain's batch or tracked loss is non-finite; one sync."""
    bad = ~torch.isfinite(batch_losses)  # (chains, draws)
    for t in traces:
        bad |= ~torch.isfinite(t).flatten(2).all(dim=2)  # (chains, draws)
    if not bool(bad.any()):
        return None
    draw = int(bad.any(dim=0).nonzero()[0])
    chain = int(bad[:, draw].nonzero()[0])
    return chain, draw


@torch.no_grad()
def _mean_loss_over(
    loss_fns: list[Callable[[Tensor, Tensor, Tensor], Tensor]],
    w: Tensor,
    x: Tensor,
    y: Tensor,
    batch: int,
    workers: _Workers | None,
) -> float:
    """Mean over all elements of the losses of the whole set at flat weights w, in batches of at most `batch`
    samples and _EVAL_ELEMENTS loss elements (a language model's activations grow with tokens, not samples),
    spread over the workers (one loss function each); summed in batch order, so the result does not depend on them.
    """
    per_sample = max(1, loss_fns[0](w, x[:1], y[:1]).numel()) if x.shape[0] else 1
    batch = max(1, min(batch, _EVAL_ELEMENTS // per_sample))
    starts = list(range(0, x.shape[0], batch))
    sums: list[Tensor] = [torch.zeros((), dtype=torch.float64, device=x.device)] * len(starts)
    counts = [0] * len(starts)

    def part(i: int) -> None:
        for j in range(i, len(starts), len(loss_fns)):
            s = starts[j]
            losses = loss_fns[i](w, x[s : s + batch], y[s : s + batch])
            sums[j], counts[j] = losses.to(torch.float64).sum(), losses.numel()

    _run_each(workers, part, len(loss_fns))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for t in sums:
        total += t
    return float(total / max(sum(counts), 1))


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
) -> ChainResult:
    """Sample cfg.chains SGLD chains from w* = params0 and record every tracked sample's loss at every draw.

    loss_fn(params, inputs, targets) -> [B] or [B, T] per-sample (per-token) losses for one set of params;
    the minibatch loss L_batch is the mean of all its elements. Schedule: burn_in steps, then a draw after
    every steps_between_draws steps, with the tracked losses evaluated at the post-step weights.
    Tracked sets are evaluated without gradients in calls of at most eval_batch_size samples and
    _EVAL_ELEMENTS loss elements per chain. vectorize: True = vmap over chains, False = loop over chains (the
    automatic fallback when a model cannot be vmapped), None = choose per call site (see the module docstring).
    cfg.precision "bfloat16" runs every loss_fn call under bfloat16 autocast (parameters, updates, init loss,
    batch losses and traces stay float32; the loss_fn decides what autocast may touch).
    replicate() -> an independent loss_fn (its own model replica) lets looped chains run on `workers` CPU threads
    (None: as many as torch's intra-op threads, at most one per chain); chain c always runs on worker c mod W.
    Raises NonFiniteError naming the first chain/draw at which a batch or tracked loss is NaN/Inf.
    """
    t_start = time.perf_counter()
    if workers is not None and workers > 1 and replicate is None:
        raise ValueError("workers > 1 needs replicate: one model replica per worker thread")
    flat = FlatParams(params0, cfg.precision)
    device, dtype, unflatten = flat.device, flat.dtype, flat.unflatten
    losses, mean_loss = flat.loss_fns(loss_fn)
    C, D = cfg.chains, cfg.draws
    x_train, y_train = train
    n_train = x_train.shape[0]
    full_batch = cfg.batch_size is None or cfg.batch_size >= n_train
    batch = n_train if full_batch else cfg.batch_size
    w0 = flat.w0  # (n_params,)
    p0 = unflatten(w0)

    # One probe sample per set: output shape () or (T,) per sample, and forward FLOPs per sample.
    probes = [_forward_flops(loss_fn, p0, x[:1], y[:1]) for x, y in tracked]
    tails = [tuple(out.shape[1:]) for out, _ in probes]
    # Tracked-evaluation chunks: eval_batch_size samples, capped by loss elements per chain and call.
    chunks = [max(1, min(eval_batch_size, _EVAL_ELEMENTS // max(1, math.prod(t)))) for t in tails]
    step_vec = eval_vec = vectorize
    if vectorize is None:  # vmap unless, on a CPU, a call is compute-bound or vmap would loop internally anyway
        _, train_flops = _forward_flops(loss_fn, p0, x_train[:1], y_train[:1])
        step_flops = 3 * train_flops * batch  # forward + backward ≈ 3 forwards, per chain
        eval_flops = max((f * k for (_, f), k in zip(probes, chunks, strict=True)), default=0)
        pair = w0.expand(2, -1)  # two identical "chains" for the probe
        loops = device.type == "cpu" and _vmap_falls_back(
            lambda: vmap(losses, in_dims=(0, None, None))(pair, x_train[:1], y_train[:1])
        )
        step_vec = device.type != "cpu" or not (loops or step_flops >= _LOOP_MIN_FLOPS)
        eval_vec = device.type != "cpu" or not (loops or eval_flops >= _LOOP_MIN_FLOPS)
    if eval_vec:  # one vmapped call covers all chains
        chunks = [max(1, k // C) for k in chunks]
    n_workers = 1
    if replicate is not None and device.type == "cpu" and not (step_vec and eval_vec):
        n_workers = max(1, min(C, torch.get_num_threads() if workers is None else workers))
    pool = _Workers(n_workers) if n_workers > 1 else None
    try:
        fns = [(losses, mean_loss)] + [flat.loss_fns(replicate()) for _ in range(n_workers - 1)]
        batch_dims = (0, None, None) if full_batch else (0, 0, 0)  # (w, inputs, targets)
        step_grad = _OverChains(
            grad_and_value(mean_loss), batch_dims, C, step_vec,
            loop_fns=[_autograd_grad_and_value(m) for _, m in fns], workers=pool,
        )  # fmt: skip
        eval_losses = _OverChains(losses, (0, None, None), C, eval_vec, loop_fns=[f for f, _ in fns], workers=pool)

        gen = torch.Generator(device=device).manual_seed(seed)
        batches = None if full_batch else _minibatch_indices(n_train, cfg.batch_size, C, gen)
        w, v = w0.expand(C, -1).clone(), None  # (chains, n_params)
        init_loss = _mean_loss_over([f for f, _ in fns], w0, x_train, y_train, eval_batch_size, pool)

        # Final buffers live on the host; on an accelerator draws fill a device block that moves out per block.
        out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        host_traces = [
            torch.empty((C, D, x.shape[0], *t), dtype=out_dtype) for (x, _), t in zip(tracked, tails, strict=True)
        ]
        host_batch = torch.empty((C, D), dtype=out_dtype)  # (chains, draws)
        per_draw = C * (1 + sum(math.prod(h.shape[2:]) for h in host_traces)) * host_batch.element_size()
        block = max(1, min(D, _MAX_BLOCK_DRAWS, _BLOCK_BYTES // per_draw))
        on_host = device.type == "cpu"
        if not on_host:
            dev_traces = [torch.empty((C, block, *h.shape[2:]), dtype=out_dtype, device=device) for h in host_traces]
            dev_batch = torch.empty((C, block), dtype=out_dtype, device=device)
        eval_slices = [
            [(s, x[s : s + k], y[s : s + k]) for s in range(0, x.shape[0], k)]
            for (x, y), k in zip(tracked, chunks, strict=True)
        ]

        total, step = cfg.total_steps, 0
        every = max(1, math.ceil(total / 100))  # progress at most ~every 1% of steps

        def advance() -> Tensor:
            """One SGLD step of every chain; returns the (chains,) minibatch loss at the pre-step weights."""
            nonlocal w, v, step
            x, y, noise = _step_inputs(train, batches, gen, w)
            grad, loss = step_grad(w, x, y)  # (chains, n_params), (chains,)
            w, v = sgld_step(w, grad, w0, cfg, noise, v)
            step += 1
            if progress is not None and (step % every == 0 or step == total):
                progress(step, total)
            return loss

        for _ in range(cfg.burn_in):
            advance()
        for d0 in range(0, D, block):
            d1 = min(d0 + block, D)
            blk_batch = host_batch[:, d0:d1] if on_host else dev_batch[:, : d1 - d0]  # (chains, b)
            blk_traces = [h[:, d0:d1] for h in host_traces] if on_host else [t[:, : d1 - d0] for t in dev_traces]
            for j in range(d1 - d0):
                for _ in range(cfg.steps_between_draws):
                    loss = advance()
                blk_batch[:, j] = loss
                with torch.no_grad():
                    for buf, slices in zip(blk_traces, eval_slices, strict=True):
                        for s, xs, ys in slices:
                            eval_losses(w, xs, ys, out=buf[:, j, s : s + xs.shape[0]])  # (chains, b[, T])
            bad = _first_nonfinite(blk_batch, blk_traces)
            if bad is not None:
                raise NonFiniteError(bad[0], d0 + bad[1])
            if not on_host:
                host_batch[:, d0:d1].copy_(blk_batch)
                for h, t in zip(host_traces, blk_traces, strict=True):
                    h[:, d0:d1].copy_(t)
        return ChainResult(host_traces, host_batch, init_loss, time.perf_counter() - t_start)
    finally:
        if pool is not None:
            pool.close()

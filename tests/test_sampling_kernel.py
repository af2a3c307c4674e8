"""The sampler's parts: one drift and preconditioner for the step and MALA, the fixed random-number order, the
vmap-or-loop decision, the draw buffers, and calibration moving exactly the sampler's chains."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest
import torch

import sbif_dsl.sampling as sampling
from sbif_dsl.sampling import SGLDConfig, run_chains, sgld_step
from sbif_dsl.sampling.batches import StepInputs
from sbif_dsl.sampling.buffers import DrawBuffers
from sbif_dsl.sampling.diagnostics import run_calibration_chains
from sbif_dsl.sampling.flat import FlatParams
from sbif_dsl.sampling.kernel import Progress
from sbif_dsl.sampling.mala import Point, acceptance
from sbif_dsl.sampling.over_chains import vmap_or_loop
from sbif_dsl.sampling.update import drift, preconditioner, rmsprop_second_moment

F64 = torch.float64


def _linreg(n: int = 12, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64)[:d] + 0.1 * torch.randn(n, generator=g, dtype=F64)
    params0 = {"w": 0.1 * torch.randn(d, generator=g, dtype=F64), "b": torch.zeros((), dtype=F64)}

    def loss_fn(p, xb, yb):
        return 0.5 * (yb - xb @ p["w"] - p["b"]) ** 2  # (B,)

    return loss_fn, params0, x, y


@pytest.mark.parametrize("method", ["sgld", "rmsprop_sgld"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_step_is_drift_and_preconditioner_in_any_dtype(method, dtype):
    """sgld_step = −(ε/2)·G⊙∇U + √ε·√G⊙σξ, with the same `drift` and `preconditioner` MALA uses."""
    g = torch.Generator().manual_seed(1)
    w, grad, w0, noise = (torch.randn(2, 5, generator=g, dtype=dtype) for _ in range(4))
    cfg = SGLDConfig(
        method=method, eps=0.01, gamma=2.0, nbeta=3.0, chains=2, draws=1, weight_decay=0.1, noise_level=0.7
    )
    w_new, v = sgld_step(w, grad, w0[0], cfg, noise)
    assert w_new.dtype == dtype and (v is None) == (method == "sgld")
    if method == "rmsprop_sgld":
        assert torch.equal(v, rmsprop_second_moment(None, grad, cfg.rmsprop_alpha))
    G = preconditioner(v, cfg)
    by_parts = w + (-(cfg.eps / 2) * G * drift(w, grad, w0[0], cfg) + math.sqrt(cfg.eps) * G**0.5 * (0.7 * noise))
    assert torch.equal(w_new, by_parts)
    assert torch.equal(drift(w, grad, w0[0], cfg), 3.0 * grad + 2.0 * (w - w0[0]) + 0.1 * w)


@pytest.mark.parametrize("method", ["sgld", "rmsprop_sgld"])
@pytest.mark.parametrize("batch_size", [None, 5])
def test_calibration_moves_the_samplers_chains_bitwise(method, batch_size):
    """Same set-up, same random numbers, same step: calibration's batch losses are run_chains' (vmapped) ones."""
    loss_fn, params0, x, y = _linreg()
    cfg = SGLDConfig(method=method, eps=1e-3, gamma=10.0, nbeta=5.0, chains=3, draws=7, burn_in=3,
                     steps_between_draws=2, batch_size=batch_size, weight_decay=0.01)  # fmt: skip
    ref = run_chains(loss_fn, params0, (x, y), [], cfg, seed=4, vectorize=True)
    cal = run_calibration_chains(loss_fn, params0, (x, y), cfg, seed=4)
    assert torch.equal(cal.batch_losses, ref.batch_losses)
    assert cal.init_loss == ref.init_loss
    assert (cal.diverged_at == -1).all() and (cal.acceptance > 0.5).all()


def test_mala_acceptance_is_nan_where_undefined():
    w = torch.zeros(2, 3, dtype=F64)
    here = Point(w, torch.ones_like(w), torch.zeros(2, dtype=F64))
    there = Point(w + 0.1, torch.ones_like(w), torch.tensor([0.0, float("inf")], dtype=F64))
    cfg = SGLDConfig(eps=0.01, gamma=1.0, nbeta=1.0, chains=2, draws=1)
    alpha = acceptance(here, there, w[0], 1.0, cfg)
    assert 0 < float(alpha[0]) <= 1 and math.isnan(float(alpha[1]))  # infinite energy: a diverged chain
    silent = SGLDConfig(eps=0.01, gamma=1.0, nbeta=1.0, chains=2, draws=1, noise_level=0.0)
    assert acceptance(here, there, w[0], 1.0, silent).isnan().all()  # σ = 0: a deterministic proposal


def test_step_inputs_draw_the_epoch_permutation_then_the_noise():
    """The fixed order that lets any path through the chains (and calibration) see the same numbers."""
    x, y = torch.arange(6.0)[:, None], torch.arange(6.0)
    w = torch.zeros(2, 4)
    inputs = StepInputs((x, y), 3, 2, seed=9, device=torch.device("cpu"))
    got = [inputs(w) for _ in range(3)]  # two steps of the first epoch, one of the second
    gen = torch.Generator().manual_seed(9)
    for epoch in range(2):
        perm = torch.argsort(torch.rand((2, 6), generator=gen), dim=1, stable=True)  # (chains, n)
        for k in range(2 if epoch == 0 else 1):
            xb, yb, noise = got[2 * epoch + k]
            assert torch.equal(yb, y[perm[:, 3 * k : 3 * k + 3]])
            assert torch.equal(noise, torch.randn(w.shape, generator=gen))
    full = StepInputs((x, y), None, 2, seed=9, device=torch.device("cpu"))
    assert full.full_batch and full(w)[0] is x  # full batch: no permutation, the set itself


def test_vmap_or_loop_decision():
    flat = FlatParams({"W": torch.zeros(64, 64)})
    train = (torch.zeros(4, 64), torch.zeros(4, 64))

    def loss_fn(p, xb, yb):
        return ((xb @ p["W"] - yb) ** 2).sum(dim=-1)  # (B,): 2·64·64 FLOPs per sample

    decide = vmap_or_loop
    assert decide(False, loss_fn, flat, train, 4, 0, 3, replicas=True, workers=2) == (False, False, 2)
    assert decide(False, loss_fn, flat, train, 4, 0, 3, replicas=False, workers=None) == (False, False, 1)
    assert decide(False, loss_fn, flat, train, 4, 0, 1, replicas=True, workers=2) == (False, False, 1)
    assert decide(True, loss_fn, flat, train, 4, 0, 3, replicas=True, workers=2) == (True, True, 1)
    assert decide(None, loss_fn, flat, train, 4, 0, 3, replicas=True, workers=2) == (True, True, 1)  # cheap: vmap
    # a compute-bound step (3 · 8192 FLOPs · 10⁴ samples per chain) loops; the cheap evaluation stays vmapped
    assert decide(None, loss_fn, flat, train, 10_000, 0, 3, replicas=True, workers=2) == (False, True, 2)


@pytest.mark.parametrize("staged", [False, True])  # True: the accelerator's path, a reused block copied out
def test_draw_buffers_fill_the_host_buffers_in_blocks(staged):
    buf = DrawBuffers(2, 150, [(3,), (2, 4)], torch.float64, torch.device("cpu"), staged=staged)
    blocks = []
    for b in buf.blocks():
        blocks.append((b.start, b.size))
        b.batch_losses.fill_(b.start)
        b.traces[1].fill_(-b.start)
        buf.keep(b)
    assert blocks == [(0, 64), (64, 64), (128, 22)]
    assert buf.batch_losses.dtype == F64 and buf.traces[1].shape == (2, 150, 2, 4)
    assert float(buf.batch_losses[1, 130]) == 128 and float(buf.traces[1][0, 70, 1, 3]) == -64
    assert DrawBuffers(1, 3, [(5,)], torch.bfloat16, torch.device("cpu")).traces[0].dtype == torch.float32


def test_progress_is_sparse_monotone_and_ends_at_the_total():
    calls = []
    clock = Progress(lambda *a: calls.append(a), 550)
    for _ in range(550):
        clock.tick()
    assert calls[-1] == (550, 550) and len(calls) <= 101
    assert all(a[0] < b[0] for a, b in zip(calls[:-1], calls[1:], strict=True))


SAMPLER_MODULES = ("__init__", "batches", "buffers", "chains", "config", "diagnostics", "evaluation", "flat",
                   "kernel", "llc", "mala", "over_chains", "update")  # fmt: skip


@pytest.mark.parametrize("module", SAMPLER_MODULES)
def test_sampler_modules_are_pure_math(module):
    """torch, the standard library, each other and sbif_dsl.errors only: no spec knowledge, no I/O libraries."""
    tree = ast.parse((Path(sampling.__file__).parent / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 2 and node.module == "errors"):
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top == "torch" or top in sys.stdlib_module_names, f"{module}.py imports {name}"

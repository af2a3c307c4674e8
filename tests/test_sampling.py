"""SGLD over stacked chains: the update formula, exact identities, determinism, vmap == loop, NaN, LLC."""

from __future__ import annotations

import math

import pytest
import torch

from sbif_dsl.errors import NonFiniteError
from sbif_dsl.sampling import ChainResult, SGLDConfig, default_nbeta, llc_per_chain, run_chains, sgld_step
from sbif_dsl.sampling.buffers import first_nonfinite

F64 = torch.float64


def _linreg(n: int = 12, d: int = 3, seed: int = 0):
    """Tiny float64 linear regression: l_i = ½ (y_i − x_iᵀ w)², params {"w": (d,), "b": ()}."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64)[:d] + 0.3 + 0.1 * torch.randn(n, generator=g, dtype=F64)
    params0 = {"w": 0.1 * torch.randn(d, generator=g, dtype=F64), "b": torch.zeros((), dtype=F64)}

    def loss_fn(p, xb, yb):
        return 0.5 * (yb - xb @ p["w"] - p["b"]) ** 2  # (B,)

    return loss_fn, params0, x, y


def _cfg(**kw) -> SGLDConfig:
    base = dict(eps=1e-3, gamma=10.0, nbeta=5.0, chains=3, draws=20)
    return SGLDConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- the update formula


def test_sgld_step_matches_hand_computation():
    w = torch.tensor([1.0, -2.0], dtype=F64)
    w0 = torch.tensor([0.5, 0.5], dtype=F64)
    grad = torch.tensor([0.3, -0.4], dtype=F64)
    noise = torch.tensor([0.7, -1.1], dtype=F64)
    cfg = _cfg(eps=0.01, gamma=2.0, nbeta=3.0, noise_level=0.5, weight_decay=0.1)
    w_new, v_new = sgld_step(w, grad, w0, cfg, noise)
    # by hand: drift_0 = 3·0.3 + 2·(1 − 0.5) + 0.1·1 = 2.0; drift_1 = 3·(−0.4) + 2·(−2.5) + 0.1·(−2) = −6.4
    expected = torch.tensor(
        [1.0 - 0.005 * 2.0 + 0.1 * 0.5 * 0.7, -2.0 - 0.005 * (-6.4) + 0.1 * 0.5 * (-1.1)], dtype=F64
    )
    torch.testing.assert_close(w_new, expected, rtol=0, atol=1e-15)
    assert v_new is None


def test_rmsprop_sgld_step_matches_hand_computation():
    w = torch.tensor([1.0, -2.0], dtype=F64)
    w0 = torch.zeros(2, dtype=F64)
    grad = torch.tensor([0.3, -0.4], dtype=F64)
    noise = torch.tensor([0.7, -1.1], dtype=F64)
    v = torch.tensor([0.2, 0.05], dtype=F64)
    cfg = _cfg(
        method="rmsprop_sgld",
        eps=0.01,
        gamma=2.0,
        nbeta=3.0,
        noise_level=0.5,
        weight_decay=0.1,
        rmsprop_alpha=0.9,
        rmsprop_eps=0.1,
    )
    w_new, v_new = sgld_step(w, grad, w0, cfg, noise, v)
    v_hand = [0.9 * 0.2 + 0.1 * 0.09, 0.9 * 0.05 + 0.1 * 0.16]
    torch.testing.assert_close(v_new, torch.tensor(v_hand, dtype=F64), rtol=0, atol=1e-15)
    exp = []
    for i, (wi, gi, ni) in enumerate(zip([1.0, -2.0], [0.3, -0.4], [0.7, -1.1], strict=True)):
        G = 1 / (math.sqrt(v_hand[i]) + 0.1)
        drift = 3.0 * gi + 2.0 * wi + 0.1 * wi
        exp.append(wi - 0.005 * G * drift + math.sqrt(0.01) * math.sqrt(G) * 0.5 * ni)
    torch.testing.assert_close(w_new, torch.tensor(exp, dtype=F64), rtol=0, atol=1e-14)
    # V starts at 0 without bias correction
    _, v_first = sgld_step(w, grad, w0, cfg, noise)
    torch.testing.assert_close(v_first, 0.1 * grad**2, rtol=0, atol=1e-16)


def test_sgld_of_step_2eps_is_sgd_of_step_eps():
    """SCIENCE.md §2: σ = 0, γ = 0, nβ = 1 ⇒ an SGLD step of size 2ε is one SGD step of size ε."""
    loss_fn, params0, x, y = _linreg()
    lr = 0.05
    cfg = _cfg(eps=2 * lr, gamma=0.0, nbeta=1.0, noise_level=0.0, chains=2, draws=1)
    res = run_chains(loss_fn, params0, (x, y), [(x, y)], cfg, seed=0)

    p = {k: v.clone().requires_grad_(True) for k, v in params0.items()}
    loss_fn(p, x, y).mean().backward()
    torch.optim.SGD(list(p.values()), lr=lr).step()  # w ← w − ε·∇L
    expected = loss_fn({k: v.detach() for k, v in p.items()}, x, y)  # (n,)
    for c in range(2):
        torch.testing.assert_close(res.traces[0][c, 0], expected, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(res.batch_losses[:, 0], loss_fn(params0, x, y).mean().expand(2), rtol=1e-14, atol=0)
    assert res.init_loss == pytest.approx(float(loss_fn(params0, x, y).mean()), rel=1e-14)


# ----------------------------------------------------------------------------- determinism and stacking


def test_same_seed_is_bitwise_identical_and_other_seed_differs():
    loss_fn, params0, x, y = _linreg()
    cfg = _cfg(batch_size=5, burn_in=3, steps_between_draws=2)
    a = run_chains(loss_fn, params0, (x, y), [(x, y), (x[:4], y[:4])], cfg, seed=7)
    b = run_chains(loss_fn, params0, (x, y), [(x, y), (x[:4], y[:4])], cfg, seed=7)
    c = run_chains(loss_fn, params0, (x, y), [(x, y), (x[:4], y[:4])], cfg, seed=8)
    assert all(torch.equal(ta, tb) for ta, tb in zip(a.traces, b.traces, strict=True))
    assert torch.equal(a.batch_losses, b.batch_losses)
    assert not torch.equal(a.traces[0], c.traces[0])
    assert not torch.equal(a.batch_losses, c.batch_losses)
    # chains are distinct (own noise, own minibatches)
    assert not torch.equal(a.traces[0][0], a.traces[0][1])


@pytest.mark.parametrize("method", ["sgld", "rmsprop_sgld"])
def test_stacked_chains_equal_per_chain_loop(method):
    """The vmapped path and the per-chain loop see the same random numbers and do the same math."""
    loss_fn, params0, x, y = _linreg()
    cfg = _cfg(method=method, batch_size=4, burn_in=5, weight_decay=0.01)
    tracked = [(x, y)]
    fast = run_chains(loss_fn, params0, (x, y), tracked, cfg, seed=3, eval_batch_size=5)
    slow = run_chains(loss_fn, params0, (x, y), tracked, cfg, seed=3, eval_batch_size=5, vectorize=False)
    torch.testing.assert_close(fast.traces[0], slow.traces[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast.batch_losses, slow.batch_losses, rtol=1e-12, atol=1e-14)


def test_unvmappable_model_falls_back_to_loop_with_same_result():
    loss_fn, params0, x, y = _linreg()

    def branchy_loss(p, xb, yb):
        if p["w"].abs().sum() > 0:  # data-dependent control flow: vmap cannot trace it
            return loss_fn(p, xb, yb)
        return loss_fn(p, xb, yb) * 1.0

    cfg = _cfg(batch_size=6)
    ref = run_chains(loss_fn, params0, (x, y), [(x, y)], cfg, seed=1)
    with pytest.warns(RuntimeWarning, match="one by one"):
        res = run_chains(branchy_loss, params0, (x, y), [(x, y)], cfg, seed=1)
    torch.testing.assert_close(res.traces[0], ref.traces[0], rtol=1e-12, atol=1e-14)


def test_minibatches_cover_the_epoch_without_replacement():
    """Per-sample loss l_i = w·e_i without noise: the gradient shows which samples were in each batch."""
    n, B = 6, 2
    x = torch.eye(n, dtype=F64)
    y = torch.zeros(n, dtype=F64)
    params0 = {"w": torch.zeros(n, dtype=F64)}

    def loss_fn(p, xb, yb):
        return xb @ p["w"]  # (B,); ∇ mean = (1/B)·Σ_{i∈batch} e_i

    cfg = _cfg(eps=2.0, gamma=0.0, nbeta=1.0, noise_level=0.0, chains=2, draws=n // B, batch_size=B)
    res = run_chains(loss_fn, params0, (x, y), [(x, y)], cfg, seed=0)
    w_after = res.traces[0][:, -1]  # (chains, n): w after one epoch = −(1/B)·(times each sample was seen)
    torch.testing.assert_close(w_after, torch.full((2, n), -1.0 / B, dtype=F64))
    assert not torch.equal(res.traces[0][0], res.traces[0][1])  # each chain its own permutation


# ----------------------------------------------------------------------------- shapes, progress, NaN


@pytest.mark.parametrize("dtype,expected", [(torch.float32, torch.float32), (F64, F64)])
def test_per_token_traces_shape_dtype_and_eval_batching(dtype, expected):
    n, T, d = 5, 3, 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, T, d, generator=g, dtype=dtype)
    y = torch.randn(n, T, generator=g, dtype=dtype)
    params0 = {"w": torch.randn(d, generator=g, dtype=dtype)}

    def loss_fn(p, xb, yb):
        return 0.5 * (yb - xb @ p["w"]) ** 2  # (B, T)

    cfg = _cfg(chains=2, draws=4)
    res = run_chains(loss_fn, params0, (x, y), [(x, y), (x[:2], y[:2])], cfg, seed=0, eval_batch_size=2)
    assert isinstance(res, ChainResult)
    assert res.traces[0].shape == (2, 4, n, T) and res.traces[1].shape == (2, 4, 2, T)
    assert all(t.dtype == expected and t.device.type == "cpu" for t in res.traces)
    assert res.batch_losses.shape == (2, 4) and res.batch_losses.dtype == expected
    whole = run_chains(loss_fn, params0, (x, y), [(x, y), (x[:2], y[:2])], cfg, seed=0)
    # Evaluation chunks change only the shapes BLAS sees: equal up to its rounding (bitwise on some CPUs; on an
    # AVX-512 machine float64 differed in the last bit, 8.9e-16, with torch 2.13, before and after the executor work).
    tol = 64 * torch.finfo(dtype).eps  # a few ulps of the O(1) losses
    torch.testing.assert_close(whole.traces[0], res.traces[0], rtol=tol, atol=tol)
    torch.testing.assert_close(res.traces[1], res.traces[0][:, :, :2])


def test_progress_is_monotone_sparse_and_complete():
    loss_fn, params0, x, y = _linreg()
    cfg = _cfg(chains=1, draws=250, burn_in=50, steps_between_draws=2)
    calls = []
    run_chains(loss_fn, params0, (x, y), [], cfg, seed=0, progress=lambda *a: calls.append(a))
    assert calls[-1] == (550, 550)
    assert len(calls) <= 101
    assert all(a[0] < b[0] for a, b in zip(calls[:-1], calls[1:], strict=True))


def test_huge_eps_on_quartic_loss_raises_nonfinite():
    x = torch.zeros(4, 1, dtype=F64)
    y = torch.zeros(4, dtype=F64)
    params0 = {"w": torch.ones(3, dtype=F64)}

    def quartic(p, xb, yb):
        return (p["w"] ** 4).sum().expand(xb.shape[0])  # (B,)

    cfg = _cfg(eps=10.0, gamma=0.0, nbeta=1.0, chains=4, draws=200)
    with pytest.raises(NonFiniteError) as info:
        run_chains(quartic, params0, (x, y), [(x, y)], cfg, seed=0)
    assert 0 <= info.value.chain < 4 and 0 <= info.value.draw < 10
    assert f"chain {info.value.chain}" in str(info.value)


def test_first_nonfinite_names_earliest_draw_then_lowest_chain():
    bl = torch.zeros(4, 10)
    tr = torch.zeros(4, 10, 3, 2)
    bl[1, 7] = float("inf")
    tr[3, 5, 2, 1] = float("nan")
    tr[2, 5, 0, 0] = float("-inf")
    assert first_nonfinite(bl, [tr]) == (2, 5)
    assert first_nonfinite(bl, []) == (1, 7)
    assert first_nonfinite(torch.zeros(2, 3), [torch.zeros(2, 3, 4)]) is None


# ----------------------------------------------------------------------------- LLC


def test_llc_of_regular_quadratic_is_half_the_dimension():
    """K(w) = ½ Σ w_i², d = 4 (SCIENCE.md §3): λ = d/2 = 2."""
    d = 4
    x = torch.zeros(8, 1, dtype=F64)
    y = torch.zeros(8, dtype=F64)
    params0 = {"w": torch.zeros(d, dtype=F64)}

    def quadratic(p, xb, yb):
        return (0.5 * (p["w"] ** 2).sum()).expand(xb.shape[0])  # (B,) same loss for every sample

    nbeta = default_nbeta(1000)
    cfg = _cfg(eps=5e-4, gamma=0.0, nbeta=nbeta, chains=16, draws=2000, burn_in=200)
    res = run_chains(quadratic, params0, (x, y), [], cfg, seed=0)
    llc = llc_per_chain(res.batch_losses, res.init_loss, nbeta)  # (chains,)
    assert llc.shape == (16,)
    assert float(llc.mean()) == pytest.approx(d / 2, rel=0.1)


def test_default_nbeta():
    assert default_nbeta(32) == pytest.approx(9.23, abs=0.01)
    assert default_nbeta(1000) == pytest.approx(144.8, abs=0.05)
    assert default_nbeta(2) == pytest.approx(2 / math.log(2))
    assert default_nbeta(1) == 1.0  # ln 1 = 0: the untempered posterior, not a division by zero


def test_llc_per_chain_formula():
    bl = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], dtype=F64)
    torch.testing.assert_close(llc_per_chain(bl, 0.5, 10.0), torch.tensor([15.0, 0.0], dtype=F64))


# ----------------------------------------------------------------------------- worker threads and precision


def _tiny_lm(seed: int = 0):
    """A 2-layer attention-only transformer on random byte windows, float32: the per-token sampler workload."""
    from sbif_dsl.models.transformer import Transformer, next_token_loss
    from sbif_dsl.runtime import functional_loss, replicate_loss

    torch.manual_seed(seed)
    model = Transformer(64, n_layers=2, n_heads=2, d_model=32, context=16)
    tokens = torch.randint(0, 64, (48, 16), generator=torch.Generator().manual_seed(seed))
    params0 = {k: v.detach() for k, v in model.named_parameters()}

    return functional_loss(model, next_token_loss), replicate_loss(model, next_token_loss), params0, tokens


def test_worker_threads_give_the_single_thread_result_bitwise():
    """Chain c always runs on worker c mod W with its own model replica: the result does not depend on W."""
    loss_fn, replicate, params0, tokens = _tiny_lm()
    cfg = SGLDConfig(eps=1e-3, gamma=1000.0, nbeta=10.0, chains=3, draws=6, burn_in=2, batch_size=8)
    data, tracked = (tokens, tokens), [(tokens[:10], tokens[:10])]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # same intra-op threads per op on both sides
    try:
        one = run_chains(loss_fn, params0, data, tracked, cfg, seed=5, vectorize=False)
        three = run_chains(
            loss_fn, params0, data, tracked, cfg, seed=5, vectorize=False, replicate=replicate, workers=3
        )
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.traces[0], three.traces[0])
    assert torch.equal(one.batch_losses, three.batch_losses)
    assert one.init_loss == three.init_loss
    assert torch.get_num_threads() == before  # the workers' thread share is given back


def test_worker_exception_reaches_the_caller_and_threads_are_restored():
    loss_fn, _, params0, tokens = _tiny_lm()
    calls = {"n": 0}

    def replicate():
        def broken(p, x, y):
            calls["n"] += 1
            raise RuntimeError("replica exploded")

        return broken

    cfg = SGLDConfig(eps=1e-3, gamma=1000.0, nbeta=10.0, chains=2, draws=2, batch_size=8)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="replica exploded"):
        run_chains(loss_fn, params0, (tokens, tokens), [(tokens, tokens)], cfg, seed=0, vectorize=False,
                   replicate=replicate, workers=2)  # fmt: skip
    assert calls["n"] >= 1 and torch.get_num_threads() == before


def test_workers_need_replicas_and_bfloat16_needs_float32():
    loss_fn, params0, x, y = _linreg()
    with pytest.raises(ValueError, match="replicate"):
        run_chains(loss_fn, params0, (x, y), [(x, y)], _cfg(), seed=0, workers=2)
    with pytest.raises(ValueError, match="bfloat16"):
        run_chains(loss_fn, params0, (x, y), [(x, y)], _cfg(precision="bfloat16"), seed=0)  # float64 params
    with pytest.raises(ValueError, match="precision"):
        _cfg(precision="float16")


def test_bfloat16_autocast_keeps_float32_traces_and_the_influence_structure():
    """bfloat16 matmuls change each loss by rounding only: same seed, the traces stay float32, differ from the
    float32 run by far less than they vary across draws, and the token × token correlations agree closely."""
    from sbif_dsl.influence.bif import bif_matrices

    loss_fn, _, params0, tokens = _tiny_lm()
    base = dict(eps=1e-3, gamma=1000.0, nbeta=10.0, chains=2, draws=60, batch_size=8)
    data, tracked = (tokens, tokens), [(tokens[:12], tokens[:12])]
    f32 = run_chains(loss_fn, params0, data, tracked, SGLDConfig(**base), seed=1)
    b16 = run_chains(loss_fn, params0, data, tracked, SGLDConfig(**base, precision="bfloat16"), seed=1)
    a, b = f32.traces[0], b16.traces[0]
    assert b.dtype == torch.float32 and b16.batch_losses.dtype == torch.float32
    assert not torch.equal(a, b)  # autocast really ran
    rounding = (a - b).abs().mean()
    spread = a.std(dim=1).mean()  # how much a token's loss moves across draws
    assert rounding < 0.05 * spread, (float(rounding), float(spread))
    ca = bif_matrices(a.flatten(2), a.flatten(2))[1]
    cb = bif_matrices(b.flatten(2), b.flatten(2))[1]
    off = ~torch.eye(ca.shape[0], dtype=torch.bool)
    r = torch.corrcoef(torch.stack([ca[off], cb[off]]).to(torch.float64))[0, 1]
    assert r > 0.99, float(r)
    assert abs(f32.init_loss - b16.init_loss) < 0.05 * float(spread)

"""Science checks against known answers (SCIENCE.md §3, §4). Slow: they sample long chains.

LLC ground truths call `sampling.run_chains` directly with Python losses (they test the estimator); one goes
through a spec and the CLI. The exact Gaussian posterior of a linear regression checks the sampled loss
covariances (what the BIF is made of) against the closed form, through a spec and the CLI.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sbif_dsl.sampling import SGLDConfig, default_nbeta, llc_per_chain, run_chains
from sbif_dsl.store import Store
from sbif_dsl.task import Dataset, SampleSet

from .conftest import sbif, write_spec
from .factories_for_tests import regression

F64 = torch.float64
NBETA = default_nbeta(1000)  # 144.76, the field's default for a batch of 1000

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


# ----------------------------------------------------------------------------- LLC: monomials


@pytest.mark.parametrize("powers", [[2, 2, 2, 2], [4], [2, 4, 4]], ids=["regular_d4", "quartic", "mixed"])
def test_llc_of_monomial_loss(powers):
    """K(w) = ½ Σ w_i^{p_i} at w* = 0: λ = Σ 1/p_i (2, 1/4, 1). Field tolerance: within 7%.

    devinterp's 8 chains × 1000 draws at ε 1e-3 make 7% a coin flip here: over 30 seeds the 8-chain estimate of
    the d = 4 case had a 3.5% std around a +3.6% ULA bias (23% of seeds fail). Stacked chains are nearly free for
    a tiny model, so we take 1024 chains × 2000 draws (std ≈ 1%) and ε 5e-4 (bias +1.8%): the same 7% then tests
    the estimator, not the seed. For the quadratic the ULA chain's exact stationary law is known, N(0, I/(nβ(1 −
    εnβ/4))), so E[λ̂] = (d/2)/(1 − εnβ/4) as well: the estimate must match that within 4 standard errors.
    Measured (seed 0): 2.031 ± 0.005 (exact ULA 2.037), 0.2529 ± 0.003, 1.014 ± 0.005 (± one standard error).
    """
    p = torch.tensor(powers, dtype=F64)

    def K(params, x, y):
        return (0.5 * (params["w"] ** p).sum()).expand(x.shape[0])  # (B,) the same loss for every sample

    cfg = SGLDConfig(eps=5e-4, gamma=0.0, nbeta=NBETA, chains=1024, draws=2000, burn_in=200)
    res = run_chains(
        K,
        {"w": torch.zeros(len(powers), dtype=F64)},
        (torch.zeros(1, 1, dtype=F64), torch.zeros(1, dtype=F64)),
        [],
        cfg,
        seed=0,
    )
    llc = llc_per_chain(res.batch_losses, res.init_loss, NBETA)  # (chains,)
    truth = sum(1 / q for q in powers)
    assert float(llc.mean()) == pytest.approx(truth, rel=0.07)
    if set(powers) == {2}:
        exact_ula = truth / (1 - cfg.eps * NBETA / 4)
        se = float(llc.std()) / math.sqrt(cfg.chains)
        assert abs(float(llc.mean()) - exact_ula) < 4 * se


# ----------------------------------------------------------------------------- LLC: normal crossing


@pytest.mark.parametrize("powers", [[1, 2], [1, 1]])
def test_llc_of_normal_crossing(powers):
    """y = x·Π w_i^{k_i}, truth w = 0, x ~ N(0, 2²), y = 0.25·noise, n = 1000 (devinterp's setup): λ = 1/(2 max k).
    Field tolerance and settings: 10 chains × 5000 draws, ε 4e-4, nβ 144.8; the truth within mean ± 3.5 std (the
    std over chains). Measured: [1, 2] 0.200 ± 0.043 (truth 0.25), [1, 1] 0.376 ± 0.080 (truth 0.5): the estimate
    sits below the truth at this nβ (for [1, 1], two equal maximal powers add a log-log correction)."""
    g = torch.Generator().manual_seed(42)
    x = 2 * torch.randn(1000, generator=g, dtype=F64)
    y = 0.25 * torch.randn(1000, generator=g, dtype=F64)
    k = torch.tensor(powers, dtype=F64)

    def loss(params, xb, yb):
        return (yb - xb * torch.prod(params["w"] ** k)) ** 2  # (B,)

    cfg = SGLDConfig(eps=4e-4, gamma=1.0, nbeta=NBETA, chains=10, draws=5000)
    res = run_chains(loss, {"w": torch.zeros(len(powers), dtype=F64)}, (x, y), [], cfg, seed=0)
    llc = llc_per_chain(res.batch_losses, res.init_loss, NBETA)
    truth = 1 / (2 * max(powers))
    assert abs(float(llc.mean()) - truth) <= 3.5 * float(llc.std())
    assert float(llc.std()) < truth / 2  # a spread this wide would make the check above meaningless


# ----------------------------------------------------------------------------- LLC: reduced-rank regression


def rrr_truth(M: int, H: int, N: int, r: int) -> float:
    """Aoyagi & Watanabe: the learning coefficient of a rank-r truth in a 2-layer linear network M → H → N."""
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:
        lam = (2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2) / 8
        return lam + (1 / 8 if (M + H + N + r) % 2 else 0)
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2
    return M * N / 2


def _squared(outputs, targets):
    return 0.5 * ((outputs - targets) ** 2).sum(dim=-1)  # (batch,)


def rrr_data(M: int = 5, N: int = 5, r: int = 0, n: int = 1000, sigma: float = 0.3, seed: int = 0) -> Dataset:
    """Data factory (used by a spec below): x ~ N(0, I_M), y = T x + σ·noise with T of rank r (N × M)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, M, generator=g, dtype=F64)
    T = torch.zeros(N, M, dtype=F64)
    if r:
        T = torch.randn(N, r, generator=g, dtype=F64) @ torch.randn(r, M, generator=g, dtype=F64)
    y = x @ T.T + sigma * torch.randn(n, N, generator=g, dtype=F64)
    return Dataset(train=SampleSet(x, y, [f"s{i}" for i in range(n)]), loss=_squared)


def test_rrr_truth_formula():
    assert [rrr_truth(*s) for s in [(5, 3, 5, 0), (5, 4, 5, 0), (4, 3, 8, 0), (8, 3, 4, 0), (8, 8, 8, 3)]] == [
        6.5,
        8,
        6,
        6,
        29,
    ]


@pytest.mark.parametrize(
    "shape", [(5, 3, 5, 0), (4, 3, 8, 0), (8, 3, 4, 0)], ids=lambda s: "MHNr=" + "".join(map(str, s))
)
def test_llc_of_reduced_rank_regression(shape):
    """Train a 2-layer linear network from small init by full-batch GD, then sample at the field's settings
    (ε 6e-4, γ 1, nβ 144.8, 3 chains × 2000 draws) and compare with Aoyagi's λ; field tolerance rtol 0.4.
    Measured: 6.34 ± 0.52 (6.5), 6.05 ± 0.18 (6), 6.53 ± 0.49 (6) (mean ± std over chains). With noise σ = 1
    instead of 0.3 the trained map fits the noise at a scale the posterior resolves (|BA| ≈ 0.16 vs 1/√nβ ≈ 0.08)
    and the estimates run 10–35% high. Not tested: (8, 8, 8, 3) → 29 gives 36–39 at 2000 draws and 41.3 (+42%)
    at 8000, outside the field's tolerance: the chains are still climbing at the field's draw count."""
    M, H, N, r = shape
    ds = rrr_data(M, N, r)
    x, y = ds.train.inputs, ds.train.targets
    g = torch.Generator().manual_seed(1)
    params = {
        "A": 0.1 * torch.randn(H, M, generator=g, dtype=F64),
        "B": 0.1 * torch.randn(N, H, generator=g, dtype=F64),
    }

    def loss(p, xb, yb):
        return _squared(xb @ p["A"].T @ p["B"].T, yb)

    for p in params.values():
        p.requires_grad_()
    opt = torch.optim.SGD(params.values(), lr=0.05)
    for _ in range(5000):
        opt.zero_grad()
        loss(params, x, y).mean().backward()
        opt.step()
    w_star = {k: v.detach() for k, v in params.items()}
    cfg = SGLDConfig(eps=6e-4, gamma=1.0, nbeta=NBETA, chains=3, draws=2000)
    res = run_chains(loss, w_star, (x, y), [], cfg, seed=0)
    llc = float(llc_per_chain(res.batch_losses, res.init_loss, NBETA).mean())
    assert llc == pytest.approx(rrr_truth(*shape), rel=0.4)


def test_llc_of_reduced_rank_regression_through_the_cli(tmp_path):
    """The same check end to end: python data + built-in deep_linear model trained in-spec, `llc` analysis,
    nβ left to its default (B / ln B for the full batch of 1000 = 144.8), read back from the llc_summary view."""
    spec = write_spec(
        tmp_path,
        """\
        name: rrr
        seed: 0
        device: cpu
        dtype: float64
        data:
          kind: python
          factory: tests.test_ground_truth:rrr_data
          options: {M: 5, N: 5, r: 0}
        model: {kind: deep_linear, hidden: [3], init_scale: 0.1}
        training: {lr: 0.05, steps: 5000, checkpoints: {steps: [5000], include_zero: false}}
        sampler: {eps: 6.0e-4, gamma: 1.0, chains: 3, draws: 2000, burn_in: 0}
        analyses: [{kind: llc}]
        """,
    )
    cache = tmp_path / "c.duckdb"
    sbif("run", str(spec), cache=cache)
    row = json.loads(
        sbif("query", "SELECT llc_mean, llc_std, chains FROM llc_summary", "--format", "json", cache=cache).stdout
    )
    assert len(row) == 1 and row[0]["chains"] == 3
    assert row[0]["llc_mean"] == pytest.approx(rrr_truth(5, 3, 5, 0), rel=0.4)


# ----------------------------------------------------------------------------- exact Gaussian posterior


GAUSS_SPEC = """\
    name: gauss
    seed: 0
    device: cpu
    dtype: float64
    data:
      kind: python
      factory: tests.factories_for_tests:regression
      options: {n: 12, d: 3, noise: 0.5}
    model: {kind: python, factory: tests.factories_for_tests:linear}
    training: {lr: 0.1, steps: 30, checkpoints: {steps: [30], include_zero: false}}
    sampler: {eps: 6.0e-4, gamma: 24.0, nbeta: 24.0, chains: 32, draws: 2000, burn_in: 1000, steps_between_draws: 10}
    analyses: [{kind: loss_kernel, observable: train}]
    """
N, NBETA_G, GAMMA_G, CHAINS_G = 12, 24.0, 24.0, 32


def _gaussian_check(spec, cache, eps: float) -> dict[str, np.ndarray]:
    """Run the spec at step size eps; return the sampled loss covariance, its standard error, the closed form
    and the exact stationary law of the discretized chain."""
    sbif("run", str(spec), "--set", f"sampler.eps={eps}", cache=cache)
    store = Store(cache)
    with store.connect(read_only=True) as con:
        key = con.execute("SELECT key FROM checkpoints WHERE study = 'gauss'").fetchone()[0]
        cov = con.execute("SELECT cov FROM loss_kernel ORDER BY i, j").fetchnumpy()["cov"].reshape(N, N)
        loss = con.execute("SELECT loss FROM loss_traces ORDER BY chain, draw, sample_idx").fetchnumpy()["loss"]
    w_star = torch.load(store.artifact(key, "state.pt"), weights_only=True)["model"]["weight"].reshape(-1)
    ds = regression(n=N, d=3, noise=0.5)
    X, y = ds.train.inputs.double().numpy(), ds.train.targets.double().numpy()

    P = NBETA_G / N * X.T @ X + GAMMA_G * np.eye(3)  # posterior precision
    mu = np.linalg.solve(P, NBETA_G / N * X.T @ y + GAMMA_G * w_star.double().numpy())
    m = y - X @ mu

    def loss_cov(S):  # Cov(l_i, l_j) for w ~ N(μ, S)
        C = X @ S @ X.T
        return 0.5 * C**2 + np.outer(m, m) * C

    traces = loss.astype(np.float64).reshape(CHAINS_G, -1, N)  # (chains, draws, n)
    per_chain = np.stack([np.cov(t.T) for t in traces])  # (chains, n, n): independent estimates
    exact = loss_cov(np.linalg.inv(P))
    return {
        "X": X,
        "y": y,
        "P": P,
        "b": NBETA_G / N * X.T @ y + GAMMA_G * w_star.double().numpy(),
        "w_star": w_star.double().numpy(),
        "cov": cov,
        "se": per_chain.std(axis=0, ddof=1) / math.sqrt(CHAINS_G),
        "exact": exact,
        "law": loss_cov(np.linalg.inv(P - eps * P @ P / 4)),  # Σ_ε = P⁻¹(I − εP/4)⁻¹
        "scale": np.sqrt(np.outer(exact.diagonal(), exact.diagonal())),
        "no_mean_term": 0.5 * (X @ np.linalg.inv(P) @ X.T) ** 2,
        "eps_pmax": eps * np.linalg.eigvalsh(P).max(),
    }


def _null_z_stats(r: dict, eps: float, replicates: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The null distribution of (mean z², max |z|) for this experiment: `replicates` runs of the exact discretized
    chain w ← A w + (ε/2)b + √ε·ξ, A = I − (ε/2)P (what SGLD is on this Gaussian), 32 chains from w* each, with the
    spec's burn-in and draw spacing, scored exactly as the sampled run. The recursion is linear, so k steps of it
    are one exact Gaussian transition, w_{t+k} − μ = A^k (w_t − μ) + N(0, Σ_ε − A^k Σ_ε A^k) with Σ_ε its stationary
    covariance: the null is drawn at the draws' spacing, not step by step (same law, 10× fewer updates), which
    affords 1000 replicates (its 0.5% / 99.5% quantiles are the 5th order statistics, not the extremes). The 78
    covariance entries are strongly correlated (the losses share a 3-dimensional w) and each z uses a 32-chain SE
    estimate, so mean z² spreads far wider than χ²₇₈/78: across study seeds the sampled run gave 0.42-2.29."""
    rng = np.random.default_rng(seed)
    X, y, P, b, law = r["X"], r["y"], r["P"], r["b"], r["law"]
    n_chains, draws, every, burn = CHAINS_G, 2000, 10, 1000
    mu = np.linalg.solve(P, b)
    A = np.eye(3) - (eps / 2) * P
    sigma = np.linalg.inv(P - eps * P @ P / 4)  # Σ_ε = P⁻¹(I − εP/4)⁻¹, the fixed point of Σ = AΣA + εI

    def transition(k: int) -> tuple[np.ndarray, np.ndarray]:
        Ak = np.linalg.matrix_power(A, k)
        return Ak, np.linalg.cholesky(sigma - Ak @ sigma @ Ak.T)

    first, step = transition(burn + every), transition(every)  # the first draw comes `every` steps after burn-in
    mean_z2, max_z = np.empty(replicates), np.empty(replicates)
    chunk = 50
    for start in range(0, replicates, chunk):
        reps = min(chunk, replicates - start)
        d = np.tile(r["w_star"] - mu, (reps * n_chains, 1))  # w − μ, (reps·chains, 3)
        ws = np.empty((reps * n_chains, draws, 3), dtype=np.float32)  # float32: half the memory traffic
        for t in range(draws):
            Ak, L = first if t == 0 else step
            d = d @ Ak.T + rng.standard_normal(d.shape) @ L.T
            ws[:, t] = d
        # one 2-d BLAS product (a batched one of 3-vectors is slow)
        resid = (y - X @ mu).astype(np.float32) - ws.reshape(-1, 3) @ X.T.astype(np.float32)
        losses = (0.5 * resid**2).reshape(reps * n_chains, draws, N)
        means = losses.mean(axis=1, keepdims=True)
        c = losses - means
        scatter = np.matmul(c.transpose(0, 2, 1), c).reshape(reps, n_chains, N, N)  # per chain, BLAS
        scatter, means = scatter.astype(np.float64), means.astype(np.float64)
        per_chain = scatter / (draws - 1)
        means = means.reshape(reps, n_chains, N)
        off = means - means.mean(axis=1, keepdims=True)  # chain means about the pooled mean
        pooled = (scatter.sum(axis=1) + draws * np.einsum("rcn,rcm->rnm", off, off)) / (draws * n_chains - 1)
        z = (pooled - law) / (per_chain.std(axis=1, ddof=1) / math.sqrt(n_chains))
        mean_z2[start : start + reps], max_z[start : start + reps] = np.mean(z**2, axis=(1, 2)), np.abs(z).max((1, 2))
    return mean_z2, max_z


def test_sampled_loss_covariance_matches_the_exact_gaussian_posterior(tmp_path):
    """Linear regression, l_i = ½(y_i − x_iᵀw)², full-batch SGLD (SCIENCE.md §4), n = 12, d = 3, nβ = γ = 24:

        P = (nβ/n)XᵀX + γI,  μ = P⁻¹((nβ/n)Xᵀy + γw*),  C = X P⁻¹ Xᵀ,  m = y − Xμ,
        Cov(l_i, l_j) = ½C_ij² + m_i m_j C_ij.

    Discretization: SGLD on a Gaussian is a linear recursion whose stationary law is exactly N(μ, Σ_ε) with
    Σ_ε = P⁻¹(I − εP/4)⁻¹; the O(ε) bias is Cov_ε − Cov, relative size ≈ ε·p_max/4.
    Monte Carlo: 32 independent chains × 2000 draws (10 steps apart; the slowest direction decorrelates in
    ~1/(ε·p_min/2) ≈ 110 steps at ε = 6e-4). The spread of the 32 per-chain covariance estimates gives a
    standard error that already includes the autocorrelation within chains; measured SE ≤ 4% of Cov_ii.
    Tolerance: 4.5 SE per entry (78 distinct entries: a Gaussian |z| > 4.5 anywhere has probability ~5e-4),
    plus the computed |bias| when comparing with the continuous-time form; the mean z² and max |z| must lie inside
    the central 99% of their null distribution, simulated from the exact discretized chain (`_null_z_stats`).

    ε = 6e-4 (ε·p_max/4 = 0.9%): the bias (≤ 1.6% of √(Cov_ii Cov_jj)) is below the SE and the sample matches the
    closed form. ε = 4e-3 (6%): the bias (up to 11%) is many SEs, and the sample matches Σ_ε's prediction and
    not the continuous one — the bias is the O(ε) one we account for, not an error of the estimator.
    """
    spec = write_spec(tmp_path, GAUSS_SPEC)
    cache = tmp_path / "c.duckdb"

    r = _gaussian_check(spec, cache, 6e-4)
    z = (r["cov"] - r["law"]) / r["se"]
    null_z2, null_max = _null_z_stats(r, 6e-4)
    lo, hi = np.quantile(null_z2, [0.005, 0.995])
    assert np.abs(z).max() < min(4.5, np.quantile(null_max, 0.995)), (np.abs(z).max(), np.quantile(null_max, 0.995))
    assert lo < np.mean(z**2) < hi, (np.mean(z**2), lo, hi)
    bias = np.abs(r["law"] - r["exact"])
    assert (bias <= 0.02 * r["scale"]).all()  # ε·p_max/4 < 1%: the O(ε) bias is small ...
    assert (np.abs(r["cov"] - r["exact"]) <= 4.5 * r["se"] + bias).all()  # ... and the closed form matches
    assert (r["se"].diagonal() / r["exact"].diagonal() < 0.05).all()  # teeth: a 10% error would show
    assert not (np.abs(r["cov"] - r["no_mean_term"]) <= 4.5 * r["se"] + bias).all()  # the m_i m_j C_ij term matters

    big = _gaussian_check(spec, cache, 4e-3)
    z = (big["cov"] - big["law"]) / big["se"]
    null_z2, null_max = _null_z_stats(big, 4e-3)
    lo, hi = np.quantile(null_z2, [0.005, 0.995])
    assert np.abs(z).max() < min(4.5, np.quantile(null_max, 0.995)), (np.abs(z).max(), np.quantile(null_max, 0.995))
    assert lo < np.mean(z**2) < hi, (np.mean(z**2), lo, hi)
    assert (np.abs(big["cov"] - big["exact"]) / big["se"]).max() > 6  # the O(ε) bias is visible at this ε

"""Trust every number: the BIF's 95% intervals cover the truth at the stated rate, and its scale is stated.

1. Coverage. Many seeded repetitions of a BIF estimate, each exactly as the `bif` stage computes it
   (`jackknife(bif_matrices, source, target)` over the 8 chains of one repetition, then `interval`), on two
   posteriors whose loss covariances are known in closed form. All repetitions are extra chains of ONE
   `run_chains` call (R reps × 8 chains), reshaped to (R, 8, draws, n).
2. Scale. What −Cov(l_i, l_q) is the derivative of, checked against a finite difference of two sampled
   perturbed posteriors (common random numbers) and the closed form.

Truth for SGLD: on a Gaussian target with precision P the SGLD chain w' = w − (ε/2)P(w − μ) + √ε ξ is a linear
recursion whose stationary law is exactly N(μ, Σ_ε), Σ_ε = P⁻¹(I − εP/4)⁻¹ (an O(ε) discretization bias, the
same mean). The intervals are statements about the sampler's stationary law, so that is the truth they must
cover; the continuous-time numbers are stated next to it.

Tolerance. A nominal 95% interval covers in each repetition with probability 0.95, so over R independent
repetitions the coverage of one pair is Binomial(R, 0.95)/R: standard error √(0.95·0.05/R) = 0.015 at R = 200,
0.011 at R = 400. We require every pair's coverage in [0.90, 0.99]: at R = 200 that is −3.3 and +2.7 SE, at
R = 400 −4.5 and +3.6 SE. Exact binomial tails at R = 400: P(< 0.90) = 1.4e-5, P(> 0.99) = 2.2e-6 per pair, so
even the 78 pairs of the regression case together fail by chance with probability < 0.2% (union bound; < 0.5%
at the true coverage ~0.945 measured below); at R = 200 the same band would fail by chance with probability 0.12
over 78 pairs, which is why both cases use R = 400 (it costs little: the step is overhead-bound). The band's
teeth: an interval that ignores the autocorrelation of the draws (iid standard error of a covariance) covers 84%
(regression, mean over pairs) and 42-45% (scalar), and the tests check that it fails.

Measured (seed 0, printed with -s): regression 78 pairs mean 0.947, min 0.927, max 0.968; scalar fixture
0.930 / 0.950 / 0.925 (a = 0, −1, +1). More reps at the same settings (other seeds): regression 0.946 mean,
0.928 min over 1000 reps; scalar 0.944 / 0.944 / 0.945 over 4000 reps, so the true coverage here is ~0.5 point
below nominal. That shortfall is the estimator, not the sampler: the misses are lopsided (scalar a = 0: 0.5-1%
below the interval, 4.5% above; the per-chain covariance estimates are skewed), while in the scalar case the
mean estimate is within 0.08 SD of the truth and the RMS jackknife SE matches the empirical SD within 2%. With
chains 3× longer (3000 draws) the scalar case is at 0.950 / 0.948 / 0.948 (2000 reps); with the regression
chains 4× shorter (500 draws 2 steps apart, 1000 reps) at 0.942 mean and 0.92 for the worst pair. So 8 chains
of ~40 effective draws each under-cover by 1-3 points; at the lengths here (~50-150 effective draws per chain,
slowest to fastest loss) by ~0.5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sbif_dsl.influence.bif import bif_matrices
from sbif_dsl.influence.uncertainty import interval, jackknife
from sbif_dsl.sampling import SGLDConfig, run_chains

from .factories_for_tests import regression

F64 = torch.float64
CHAINS = 8  # per repetition: what a stage's jackknife sees
LO, HI = 0.90, 0.99  # per-pair coverage band (module docstring: binomial SE at the repetitions used)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are overhead-bound: extra intra-op threads only add contention (as Runtime.thread_policy).
    Module-scoped, so it is in force before the module-scoped sampling fixtures run (2 threads: 3× slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def coverage(traces: torch.Tensor, src: slice, tgt: slice, truth: np.ndarray) -> dict[str, np.ndarray]:
    """traces (reps, chains, draws, n); truth: the exact bif_cov (−Cov) of the src × tgt block.

    Per repetition, the stage's estimator: jackknife(bif_matrices, src, tgt) over its chains, the 95% interval.
    Returns the coverage per pair, the intervals and per-rep estimates, and the coverage of an iid-draws interval
    (the teeth)."""
    los, his, naive_hits, thetas = [], [], [], []
    for rep in traces:  # (chains, draws, n)
        s, t = rep[..., src], rep[..., tgt]
        (cov, se, df), _ = jackknife(bif_matrices, s, t)
        lo, hi = interval(cov, se, df)
        los.append(lo.numpy())
        his.append(hi.numpy())
        thetas.append(cov.numpy())
        # the interval that treats the C·D pooled draws as independent: SE = sd(x_c·y_c)/√N
        a = s.reshape(-1, s.shape[-1]).to(F64)
        b = t.reshape(-1, t.shape[-1]).to(F64)
        a, b = a - a.mean(0), b - b.mean(0)
        n = a.shape[0]
        second = (a**2).T @ (b**2) / n - (a.T @ b / n) ** 2  # Var(x_c·y_c)
        half = 1.96 * np.sqrt(second.clamp_min(0).numpy() / n)
        naive_hits.append(np.abs(cov.numpy() - truth) <= half)
    lo, hi = np.array(los), np.array(his)
    return {
        "coverage": np.mean((lo <= truth) & (truth <= hi), axis=0),
        "lo": lo,
        "hi": hi,
        "theta": np.array(thetas),
        "naive": np.mean(naive_hits, axis=0),
    }


# ----------------------------------------------------------------------------- (a) exact Gaussian regression

# tests/test_ground_truth.py's setup: l_i = ½(y_i − x_iᵀw)², n = 12, d = 3, noise 0.5, nβ = γ = 24, full batch.
N_A, NBETA_A, GAMMA_A = 12, 24.0, 24.0
REPS_A = 400  # 78 pairs: see the module docstring for why 400, not 200
# ε·p_max/4 = 7.8% (P's eigenvalues 30.8, 47.1, 62.0): a large discretization bias, which the truth Σ_ε includes;
# the slowest direction relaxes by ε·p_min/2 = 7.7% a step, so 4 steps a draw (ρ ≈ 0.73 per draw for w).
CFG_A = SGLDConfig(eps=5e-3, gamma=GAMMA_A, nbeta=NBETA_A, chains=REPS_A * CHAINS, draws=1000, burn_in=200,
                   steps_between_draws=4)  # fmt: skip


def _linear_loss(params, x, y):
    return 0.5 * (y - x @ params["w"]) ** 2  # (B,)


@pytest.fixture(scope="module")
def gaussian():
    ds = regression(n=N_A, d=3, noise=0.5)
    X, y = ds.train.inputs.to(F64), ds.train.targets.to(F64)
    w = torch.zeros(3, dtype=F64)
    for _ in range(30):  # w*: 30 GD steps (lr 0.1) from 0, short of the least-squares fit, so μ ≠ w*
        w = w - 0.1 * X.T @ (X @ w - y) / N_A
    Xn, yn = X.numpy(), y.numpy()
    P = NBETA_A / N_A * Xn.T @ Xn + GAMMA_A * np.eye(3)
    mu = np.linalg.solve(P, NBETA_A / N_A * Xn.T @ yn + GAMMA_A * w.numpy())
    m = yn - Xn @ mu  # mean residuals

    def loss_cov(S):  # Cov(l_i, l_j) for w ~ N(μ, S): r ~ N(m, C), C = X S Xᵀ; ¼Cov(r_i², r_j²) = ½C² + m m C
        C = Xn @ S @ Xn.T
        return 0.5 * C**2 + np.outer(m, m) * C

    res = run_chains(_linear_loss, {"w": w}, (X, y), [(X, y)], CFG_A, seed=0)
    traces = res.traces[0].reshape(REPS_A, CHAINS, CFG_A.draws, N_A)
    law = loss_cov(np.linalg.inv(P - CFG_A.eps * P @ P / 4))  # the chain's exact stationary law Σ_ε
    return {"traces": traces, "truth": -law, "continuous": -loss_cov(np.linalg.inv(P))}


def test_intervals_cover_the_exact_gaussian_regression_bif(gaussian):
    """Every one of the 78 distinct pairs (i ≤ j) of the 12 × 12 bif_cov: coverage in [0.90, 0.99] over 400 reps.

    Truth −Cov_ε(l_i, l_j) under N(μ, Σ_ε); the continuous-time −Cov differs by up to 8.7% of the largest entry,
    i.e. several SEs: the intervals cover the sampler's law, and the O(ε) bias is the step size's (ε → 0 removes
    it, as test_ground_truth shows), not something an interval from chain-to-chain spread can see. Measured: the
    same intervals cover the continuous-time −Cov in 0.79 of reps on average and 0.15 for the worst pair."""
    r = coverage(gaussian["traces"], slice(None), slice(None), gaussian["truth"])
    iu = np.triu_indices(N_A)
    cov = r["coverage"][iu]
    table = np.array2string(r["coverage"], precision=3, max_line_width=200)
    msg = f"mean {cov.mean():.4f} min {cov.min():.3f} max {cov.max():.3f}\n{table}"
    print(f"\n(a) Gaussian regression coverage over {REPS_A} reps: {msg}")
    print(f"(a) iid-draws interval coverage: mean {r['naive'][iu].mean():.3f} max {r['naive'][iu].max():.3f}")
    cont = np.mean((r["lo"] <= gaussian["continuous"]) & (gaussian["continuous"] <= r["hi"]), axis=0)[iu]
    print(f"(a) coverage of the continuous-time −Cov instead: mean {cont.mean():.3f} min {cont.min():.3f}")
    assert ((cov >= LO) & (cov <= HI)).all(), msg
    # unbiased for the stationary law: the mean of 400 estimates is within 4.5 of its standard errors everywhere
    # (the pooled ddof-1 covariance of autocorrelated draws is biased towards 0 by ~τ_int/N ≈ 0.1-0.3%, about
    # 0.05 SD of one estimate, ~1 SE of the mean of 400: inside the tolerance, negligible for coverage)
    z = (r["theta"].mean(0) - gaussian["truth"]) / (r["theta"].std(0, ddof=1) / math.sqrt(REPS_A))
    assert np.abs(z[iu]).max() < 4.5, np.abs(z[iu]).max()
    assert r["naive"][iu].mean() < LO  # teeth: ignoring autocorrelation fails the band (draws are 4 steps apart)


def test_correlation_intervals_cover_the_exact_gaussian_regression(gaussian):
    """bif_corr = −Corr_ε(l_i, l_j) of the 66 pairs i < j (the truth: −Cov_ε over √(Var_ε·Var_ε)), its interval on
    Fisher's z as the bif stage computes it: coverage in [0.90, 0.99] over 400 reps, every interval in [−1, 1].
    Measured (seed 0): mean 0.946, min 0.920, max 0.975 over pairs with |Corr| 0.00-0.90."""
    law = -gaussian["truth"]
    truth = -law / np.sqrt(np.outer(np.diag(law), np.diag(law)))
    los, his = [], []
    for rep in gaussian["traces"]:
        _, (corr, se, df) = jackknife(bif_matrices, rep, rep, scales=("raw", "fisher_z"))
        lo, hi = interval(corr, se, df, "fisher_z")
        los.append(lo.numpy())
        his.append(hi.numpy())
    lo, hi = np.array(los), np.array(his)
    iu = np.triu_indices(N_A, k=1)
    cov = np.mean((lo <= truth) & (truth <= hi), axis=0)[iu]
    print(f"\n(a) −Corr coverage over {REPS_A} reps: mean {cov.mean():.4f} min {cov.min():.3f} max {cov.max():.3f}; "
          f"|truth| {np.abs(truth[iu]).min():.2f}..{np.abs(truth[iu]).max():.2f}")  # fmt: skip
    assert ((cov >= LO) & (cov <= HI)).all(), cov
    assert (lo[:, iu[0], iu[1]] >= -1).all() and (hi[:, iu[0], iu[1]] <= 1).all()


def _binomial_band(reps: int, pairs: int, p: float = 0.95) -> tuple[float, float]:
    """Where the mean coverage over `pairs` pairs of `reps` repetitions lies when every interval covers with
    probability p: ±3.5 binomial SEs of one pair's coverage (the pairs share their chains, so their mean is no
    steadier than one pair), around the nominal p."""
    half = 3.5 * math.sqrt(p * (1 - p) / reps)
    return p - half, p + half


def test_intervals_at_four_chains_cover_the_exact_gaussian_regression(gaussian):
    """The same chains as 800 repetitions of 4 chains (t with 3 degrees of freedom): −Cov and −Corr (Fisher's z)
    intervals cover the stationary law per pair inside [0.90, 0.99] and on average inside the binomial band of
    800 repetitions around 0.95."""
    reps, chains = gaussian["traces"].shape[:2]
    four = gaussian["traces"].reshape(reps * chains // 4, 4, *gaussian["traces"].shape[2:])
    r = coverage(four, slice(None), slice(None), gaussian["truth"])
    iu = np.triu_indices(N_A)
    law = -gaussian["truth"]
    truth_corr = -law / np.sqrt(np.outer(np.diag(law), np.diag(law)))
    hits = []
    for rep in four:
        _, (corr, se, df) = jackknife(bif_matrices, rep, rep, scales=("raw", "fisher_z"))
        lo, hi = interval(corr, se, df, "fisher_z")
        hits.append((lo.numpy() <= truth_corr) & (truth_corr <= hi.numpy()))
    iu1 = np.triu_indices(N_A, k=1)
    corr_cov = np.mean(hits, axis=0)[iu1]
    cov = r["coverage"][iu]
    band = _binomial_band(len(four), len(cov))
    print(f"\n(a) 4 chains × {len(four)} reps: −Cov mean {cov.mean():.4f} min {cov.min():.3f}; −Corr mean "
          f"{corr_cov.mean():.4f} min {corr_cov.min():.3f}; band {band[0]:.3f}..{band[1]:.3f}")  # fmt: skip
    assert ((cov >= LO) & (cov <= HI)).all() and band[0] <= cov.mean() <= band[1], cov
    assert ((corr_cov >= LO) & (corr_cov <= HI)).all() and band[0] <= corr_cov.mean() <= band[1], corr_cov


# ----------------------------------------------------------------------------- (b) the scalar fixture

# SCIENCE.md §8: w* = 0, L(w) = w²/2, nβ = 2, γ = 2 ⇒ p(w) ∝ exp(−nβL − γw²/2) = N(0, 1/4), precision p = 4.
# Query l_q = (w − 1)²/2, candidates l_a = (w − a)²/2, a ∈ {0, −1, +1}. Under N(0, v):
#   Cov(l_a, l_q) = v²/2 + a·v    (v = 1/4: 1/32 + a/4 = 0.03125, −0.21875, 0.28125)
# SGLD at step ε: stationary variance v_ε = 1/(p(1 − εp/4)); at ε = 0.01, v_ε = 0.252525 (+1.0%), so
#   Cov_ε(l_a, l_q) = 0.031884, −0.220641, 0.284410: bif_cov = −Cov_ε is the truth the intervals must cover.
NBETA_B, GAMMA_B, EPS_B = 2.0, 2.0, 0.01
P_B = NBETA_B + GAMMA_B
A = np.array([0.0, -1.0, 1.0])
REPS_B = 400
# per-step contraction εp/2 = 0.02: τ_int(w) ≈ 100 steps; 5 steps a draw, 1000 draws ≈ 50 autocorrelation times
CFG_B = SGLDConfig(eps=EPS_B, gamma=GAMMA_B, nbeta=NBETA_B, chains=REPS_B * CHAINS, draws=1000, burn_in=500,
                   steps_between_draws=5)  # fmt: skip


def _scalar_loss(params, x, y):
    """(w − x₀)²/2 + x₁·(w − 1)²/2: x = (0, δ) is the training sample L + δ·l_q, x = (a, 0) is l_a."""
    w = params["w"][0]
    return 0.5 * (w - x[:, 0]) ** 2 + x[:, 1] * 0.5 * (w - 1) ** 2  # (B,)


def _train(delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One dummy training sample whose loss is L(w) + δ·l_q(w)."""
    return torch.tensor([[0.0, delta]], dtype=F64), torch.zeros(1, dtype=F64)


# tracked: column 0 is the query (a = 1), columns 1..3 the candidates a = 0, −1, +1
TRACKED_B = (torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [1.0, 0.0]], dtype=F64), torch.zeros(4, dtype=F64))


def scalar_cov(v: float) -> np.ndarray:
    return v**2 / 2 + A * v  # Cov(l_a, l_q) under N(0, v)


def ula_variance(p: float, eps: float) -> float:
    return 1 / (p * (1 - eps * p / 4))


@pytest.fixture(scope="module")
def scalar():
    res = run_chains(_scalar_loss, {"w": torch.zeros(1, dtype=F64)}, _train(0.0), [TRACKED_B], CFG_B, seed=0)
    traces = res.traces[0].reshape(REPS_B, CHAINS, CFG_B.draws, 4)
    v_eps = ula_variance(P_B, EPS_B)
    return {"traces": traces, "truth": -scalar_cov(v_eps)[:, None], "v_eps": v_eps}


def test_scalar_fixture_closed_form():
    assert scalar_cov(1 / 4) == pytest.approx([0.03125, -0.21875, 0.28125])
    assert ula_variance(P_B, 0.0) == 0.25
    assert scalar_cov(ula_variance(P_B, EPS_B)) == pytest.approx([0.031884, -0.220641, 0.284410], abs=1e-6)


def test_intervals_cover_the_scalar_fixture_bif(scalar):
    """bif_cov(l_a, l_q) for a = 0, −1, +1: coverage of the truth −Cov_ε in [0.90, 0.99] over 400 reps."""
    r = coverage(scalar["traces"], slice(1, 4), slice(0, 1), scalar["truth"])
    cov = r["coverage"][:, 0]
    msg = f"coverage a=0: {cov[0]:.3f}, a=-1: {cov[1]:.3f}, a=+1: {cov[2]:.3f}"
    print(f"\n(b) scalar fixture over {REPS_B} reps: {msg}; iid-draws interval: {np.round(r['naive'][:, 0], 3)}")
    assert ((cov >= LO) & (cov <= HI)).all(), msg
    z = (r["theta"].mean(0) - scalar["truth"]) / (r["theta"].std(0, ddof=1) / math.sqrt(REPS_B))
    assert np.abs(z).max() < 4, z.ravel()
    assert r["naive"].max() < 0.6  # teeth: ignoring autocorrelation fails the band


# ----------------------------------------------------------------------------- scale: what bif_cov is d/dδ of


def expected_query_loss(delta: float, eps: float) -> float:
    """E[l_q] under the stationary law of SGLD (ε = 0: the posterior) for L → L + δ·l_q, in closed form.

    Energy nβ(w²/2 + δ(w−1)²/2) + γw²/2: precision p_δ = nβ(1+δ) + γ, mean m_δ = nβδ/p_δ (SGLD's linear recursion
    keeps the mean), variance 1/(p_δ(1 − εp_δ/4)); E[(w−1)²/2] = ((1 − m_δ)² + var)/2."""
    p = NBETA_B * (1 + delta) + GAMMA_B
    m = NBETA_B * delta / p
    return ((1 - m) ** 2 + ula_variance(p, eps)) / 2


H = 0.05  # ±h; the O(h²) term of the central difference is computed exactly below (−0.0007 at ε = 0)
CFG_FD = SGLDConfig(eps=EPS_B, gamma=GAMMA_B, nbeta=NBETA_B, chains=4096, draws=400, burn_in=500,
                    steps_between_draws=5)  # fmt: skip


def test_bif_times_nbeta_is_the_derivative_of_the_query_loss(scalar):
    """Up-weighting the query's loss in L, the posterior ∝ exp(−nβ(L + δ·l_q) − γ/2·w²), gives

        dE_δ[φ]/dδ at δ = 0  =  −nβ·Cov(l_q, φ)  =  nβ·bif_cov(q, φ)

    (differentiate the normalized density: ∂ log p_δ/∂δ = −nβ(l_q − E[l_q])). The energy-weight convention,
    exp(−nβL − δ·l_q − …), gives bif_cov itself; a per-sample weight w_i in L = (1/n)Σ w_i l_i gives (nβ/n)·bif_cov.
    Closed form at φ = l_q: −nβ·Var(l_q) = −2 × 0.28125 = −0.5625.

    Under SGLD this identity holds only to O(ε): the chain's own response (closed form at ε = 0.01) is
    dE/dδ = −0.562494 (its variance term carries (1 − εp/2)/(1 − εp/4)² = 1 + O(ε²)), while the chain's
    −nβ·Var_ε(l_q) = −0.568821: 1.1% apart, about 2 SEs of the 400-rep BIF. So the finite difference is compared
    with the chain's closed form within its SE, the BIF with −nβ·Var_ε within its SE, and the two with each other
    within their combined SEs plus the exactly computed gap between those two truths (O(ε), and O(h²) at ±h).
    Measured (seed 0): FD −0.56275 ± 0.00174 (chain's closed form at ±h −0.56316); nβ·bif_cov −0.56299 ± 0.00228
    (truth −0.56882: 2.6 SE; the pooled ddof-1 variance is biased towards 0 by ~0.0013 at these lengths);
    exact −0.5625."""
    # the finite difference of two sampled perturbed posteriors, same seed (common random numbers)
    runs = [run_chains(_scalar_loss, {"w": torch.zeros(1, dtype=F64)}, _train(d), [TRACKED_B], CFG_FD, seed=7)
            for d in (H, -H)]  # fmt: skip
    plus, minus = (r.traces[0][..., :1] for r in runs)  # (chains, draws, 1) l_q

    per_chain = ((plus.mean(dim=(1, 2)) - minus.mean(dim=(1, 2))) / (2 * H)).numpy()  # (chains,), CRN-paired
    # a mean over independent chains: its delete-one-chain jackknife SE is exactly sd/√C (computed directly,
    # since `jackknife` would copy the traces once per chain)
    fd_hat, fd_se = per_chain.mean(), per_chain.std(ddof=1) / math.sqrt(len(per_chain))
    fd_chain = (expected_query_loss(H, EPS_B) - expected_query_loss(-H, EPS_B)) / (2 * H)  # the sampler's, exact
    fd_exact = (expected_query_loss(H, 0.0) - expected_query_loss(-H, 0.0)) / (2 * H)  # the posterior's, at h

    # the prediction: nβ·bif_cov(l_{+1}, l_q) = −nβ·Var(l_q), mean of the 400 independent 8-chain stage estimates
    reps = np.array([float(bif_matrices(rep[..., 3:4], rep[..., 0:1])[0][0, 0]) for rep in scalar["traces"]])
    pred, pred_se = NBETA_B * reps.mean(), NBETA_B * reps.std(ddof=1) / math.sqrt(len(reps))
    pred_law = -NBETA_B * scalar_cov(scalar["v_eps"])[2]  # −nβ·Var_ε(l_q) = −0.568821
    exact = -NBETA_B * scalar_cov(0.25)[2]  # −0.5625

    gap = abs(pred_law - fd_chain)  # the O(ε) failure of the identity under SGLD (+ the O(h²) of the FD)
    print(f"\nFD {fd_hat:.5f} ± {fd_se:.5f} (chain's closed form {fd_chain:.5f}, posterior's at h {fd_exact:.5f}); "
          f"nβ·bif_cov {pred:.5f} ± {pred_se:.5f} (−nβ·Var_ε {pred_law:.5f}); exact −nβ·Var {exact:.5f}; "
          f"O(ε) gap {gap:.5f}")  # fmt: skip
    assert exact == pytest.approx(-0.5625)
    assert (expected_query_loss(1e-6, 0.0) - expected_query_loss(-1e-6, 0.0)) / 2e-6 == pytest.approx(exact)
    assert abs(fd_hat - fd_chain) < 4 * fd_se, (fd_hat, fd_chain, fd_se)
    assert abs(pred - pred_law) < 4 * pred_se, (pred, pred_law, pred_se)
    assert abs(fd_hat - pred) < 4 * math.hypot(fd_se, pred_se) + gap, (fd_hat, pred)
    assert abs(fd_hat - exact) < 0.02 * abs(exact)  # within 2% of −0.5625 (O(ε) + O(h²) + noise)
    assert fd_se < 0.005 and pred_se < 0.005  # teeth: a factor nβ = 2 (or a sign) off would be ~100 SEs


# ----------------------------------------------------------------------------- (c) correlations: Fisher's z

# Two AR(1) series with the same coefficient φ and innovations correlated −ρ: their stationary correlation is −ρ
# exactly (so bif_corr = −Corr = +ρ). 4 chains of 100 draws at φ = 0.9: ~5 effective draws a chain, where the
# raw-scale interval r ± t·SE passed 1 (measured, seed 0: in 153 of 400 reps; coverage 0.933, Fisher z: 0.953).
RHO_C, PHI_C, CHAINS_C, DRAWS_C, REPS_C = 0.95, 0.9, 4, 100, 400
ONE = 1 + 1e-12  # a correlation matrix's diagonal is ±1 to float64 rounding (−1.0000000000000004 measured)


def _ar1_pairs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chains, draws, REPS_C) sources and targets: column r of each is repetition r's pair (the others: other
    repetitions, independent), started in the stationary law."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(2, CHAINS_C, DRAWS_C, REPS_C, generator=g, dtype=F64)
    e[1] = -RHO_C * e[0] + math.sqrt(1 - RHO_C**2) * e[1]
    w = torch.empty_like(e)
    w[:, :, 0] = e[:, :, 0]
    for t in range(1, DRAWS_C):
        w[:, :, t] = PHI_C * w[:, :, t - 1] + math.sqrt(1 - PHI_C**2) * e[:, :, t]
    return w[0], w[1]


def test_correlation_intervals_lie_in_the_unit_interval_and_cover():
    """bif_corr's interval on Fisher's z, as the bif stage computes it, at |r| ≈ 0.95 with 4 chains: every one
    inside [−1, 1] holding its estimate (the diagonal of a correlation matrix, r = ±1 exactly, too), and the
    repetitions' pairs (ρ = 0.95) covered in [0.90, 0.99] of 400 reps (the module docstring's band)."""
    src, tgt = _ar1_pairs(0)
    _, (corr, se, df) = jackknife(bif_matrices, src, tgt, scales=("raw", "fisher_z"))  # (reps, reps)
    lo, hi = interval(corr, se, df, "fisher_z")
    assert df == CHAINS_C - 1 and bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
    assert bool(((-1 <= lo) & (lo <= corr) & (corr <= hi) & (hi <= 1)).all())
    d_lo, d, d_hi = (torch.diagonal(x).numpy() for x in (lo, corr, hi))
    assert 0.9 < d.mean() < 1 and (d_hi - d < d - d_lo).all()  # asymmetric: shorter towards |r| = 1
    covered = float(np.mean((d_lo <= RHO_C) & (RHO_C <= d_hi)))
    print(f"\n(c) bif_corr at ρ = {RHO_C}, 4 chains: coverage {covered:.3f} over {REPS_C} reps")
    assert LO <= covered <= HI
    # a correlation matrix' own diagonal (r = 1): the clamp keeps the interval finite and holding r
    both = torch.cat([src[..., :5], tgt[..., :5]], dim=2)
    _, (k, k_se, _) = jackknife(lambda x: bif_matrices(x, x), both, scales=("raw", "fisher_z"))
    k_lo, k_hi = interval(k, k_se, df, "fisher_z")
    assert bool(((-ONE <= k_lo) & (k_lo <= k) & (k <= k_hi) & (k_hi <= ONE)).all())
    assert torch.allclose(torch.diagonal(k), torch.full((10,), -1.0, dtype=F64))


def test_correlation_columns_of_the_stages_stay_in_the_unit_interval(tmp_path):
    """The stages' stored correlation intervals (bif's bif_corr, loss_kernel's corr) at |r| ≈ 0.95, 4 chains:
    inside [−1, 1], holding the estimate, the stored _se the delta-method (1 − r²)·SE_z of those intervals."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from sbif_dsl.stages import bif, loss_kernel
    from sbif_dsl.stages.base import Inputs, Stage

    src, tgt = _ar1_pairs(1)
    both = torch.cat([src[..., :40], tgt[..., :40]], dim=2).numpy()  # (4, 100, 80): pairs (r, 40 + r)
    table = pa.table({"observable": ["x"] * both.size, "loss": both.ravel()})  # the columns read_traces reads
    pq.write_table(table, tmp_path / "traces.parquet")
    (tmp_path / "summary.json").write_text(json.dumps({"shapes": {"x": list(both.shape)}}))
    files = {"s": {n: tmp_path / n for n in ("traces.parquet", "summary.json")}}
    runs = {
        "bif_corr": bif.run(Stage("bif", 1, {"source": "x", "target": None, "normalize": "pearson"}, ("s",)),
                            Inputs(files), None, tmp_path).tables["r_bif"],
        "corr": loss_kernel.run(Stage("loss_kernel", 1, {"observable": "x"}, ("s",)),
                                Inputs(files), None, tmp_path).tables["r_loss_kernel"],
    }  # fmt: skip
    for name, rows in runs.items():
        r, lo, hi, se = (np.asarray(rows[name + s], dtype=float) for s in ("", "_lo", "_hi", "_se"))
        assert np.abs(r).max() > 0.9, name  # the ρ = 0.95 pairs are there
        assert ((-ONE <= lo) & (lo <= r) & (r <= hi) & (hi <= ONE)).all(), name
        z_half = np.arctanh(np.clip(hi, -1 + 1e-15, 1 - 1e-15)) - np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
        inner = np.abs(r) < 0.99  # away from the clamp: hi = tanh(atanh r + t·SE/(1 − r²))
        np.testing.assert_allclose(z_half[inner], 3.182 * se[inner] / (1 - r[inner] ** 2), rtol=1e-6)

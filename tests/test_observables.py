"""Observables beyond losses (sbif_dsl/observables): exact covariances on a Gaussian posterior, the built-in
output observables on a language model, the induction-score observable, python hooks' contract errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import sbif_dsl as sb
from sbif_dsl.store import Store

from .conftest import sbif, write_spec
from .factories_for_tests import regression

# ----------------------------------------------------------------------------- exact Gaussian posterior

N, D, NBETA, GAMMA, CHAINS, EPS = 12, 3, 24.0, 24.0, 32, 6.0e-4
GAUSS_SPEC = f"""\
    name: gauss_obs
    seed: 0
    device: cpu
    dtype: float64
    data:
      kind: python
      factory: tests.factories_for_tests:regression
      options: {{n: {N}, d: {D}, noise: 0.5}}
    model: {{kind: python, factory: tests.factories_for_tests:linear}}
    training: {{lr: 0.1, steps: 30, checkpoints: {{steps: [30], include_zero: false}}}}
    observables:
      - {{name: train, data: train}}
      - {{name: pred, kind: python, factory: "tests.factories_for_tests:prediction", data: probe}}
      - {{name: sq, kind: python, factory: "tests.factories_for_tests:squared_prediction", data: probe}}
    sampler: {{eps: {EPS}, gamma: {GAMMA}, nbeta: {NBETA}, chains: {CHAINS}, draws: 1000, burn_in: 500,
              steps_between_draws: 10}}
    analyses:
      - {{kind: bif, name: on_pred, source: train, target: pred, normalize: none}}
      - {{kind: bif, name: on_sq, source: train, target: sq, normalize: none}}
    """


@pytest.mark.slow
def test_influence_on_linear_and_quadratic_observables_matches_the_exact_gaussian_posterior(tmp_path):
    """Linear regression, full-batch SGLD (SCIENCE.md §4), observables of the probe set's rows a_j:
    φ_j = a_jᵀw (linear) and φ_j = (a_jᵀw)² (quadratic). With w ~ N(μ, S), u = w − μ, m_i = y_i − x_iᵀμ,
    C_ij = x_iᵀ S a_j and c_j = a_jᵀμ (odd Gaussian moments vanish, Cov(X², Y²) = 2Cov(X, Y)²):

        Cov(l_i, a_jᵀw)     = −m_i C_ij
        Cov(l_i, (a_jᵀw)²)  = C_ij² − 2 m_i c_j C_ij

    S is the discretized chain's exact stationary covariance Σ_ε = P⁻¹(I − εP/4)⁻¹ (test_ground_truth explains the
    O(ε) bias it accounts for). The stage's jackknife-over-chains SE (32 chains) is the yardstick: |z| < 4.5 for
    every one of the 72 entries and mean z² near 1; the quadratic form without its C² term must fail.
    """
    spec = write_spec(tmp_path, GAUSS_SPEC)
    cache = tmp_path / "c.duckdb"
    sbif("run", str(spec), cache=cache)
    store = Store(cache)
    with store.connect(read_only=True) as con:
        key = con.execute("SELECT key FROM checkpoints WHERE study = 'gauss_obs'").fetchone()[0]
        rows = {
            name: con.execute(
                "SELECT bif_cov, bif_cov_se FROM bif WHERE analysis = ? ORDER BY source_idx, target_idx", [name]
            ).fetchnumpy()
            for name in ("on_pred", "on_sq")
        }
    w_star = torch.load(store.artifact(key, "state.pt"), weights_only=True)["model"]["weight"].reshape(-1)
    ds = regression(n=N, d=D, noise=0.5)
    X, y = ds.train.inputs.double().numpy(), ds.train.targets.double().numpy()
    A = ds.queries["probe"].inputs.double().numpy()  # (3, d)
    P = NBETA / N * X.T @ X + GAMMA * np.eye(D)
    mu = np.linalg.solve(P, NBETA / N * X.T @ y + GAMMA * w_star.double().numpy())
    S = np.linalg.inv(P - EPS * P @ P / 4)  # Σ_ε
    m, C, c = y - X @ mu, X @ S @ A.T, A @ mu  # (n,), (n, 3), (3,)
    exact = {"on_pred": -m[:, None] * C, "on_sq": C**2 - 2 * m[:, None] * c[None, :] * C}

    for name, cov in exact.items():
        bif, se = rows[name]["bif_cov"].reshape(N, 3), rows[name]["bif_cov_se"].reshape(N, 3)
        z = (-bif - cov) / se  # bif_cov = −Cov
        assert np.abs(z).max() < 4.5 and 0.3 < np.mean(z**2) < 2.5, (name, np.abs(z).max(), np.mean(z**2))
        assert (se < 0.1 * np.abs(cov).max()).all(), name  # teeth: the SE resolves the signal
    wrong = -2 * m[:, None] * c[None, :] * C  # the quadratic form without its C² term
    bif, se = rows["on_sq"]["bif_cov"].reshape(N, 3), rows["on_sq"]["bif_cov_se"].reshape(N, 3)
    assert np.abs((-bif - wrong) / se).max() > 6

"""How correlated consecutive SGLD draws are: few effective draws make BIF entries noisy (benchmarks/README.md)."""

from __future__ import annotations

import numpy as np


def ar1_mixing(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per chain: lag-1 autocorrelation ρ of a (chains, draws) series and its effective number of draws under an
    AR(1) model, ESS = D·(1 − ρ)/(1 + ρ), capped at D. Computed in float64; NaN where a chain is constant."""
    x = np.asarray(series, dtype=np.float64)  # (chains, draws)
    x = x - x.mean(axis=1, keepdims=True)
    draws = x.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (x[:, 1:] * x[:, :-1]).sum(axis=1) / (x * x).sum(axis=1)  # (chains,)
        ess = np.minimum(draws, draws * (1 - rho) / (1 + rho))
    return rho, ess

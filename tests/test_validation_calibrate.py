"""`sbif calibrate`: the MALA acceptance formula, stationarity statistics, divergence handling, the
recommendation rule, and the command end to end on the tiny study (cached stages, views, errors)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sbif_dsl.calibrate import GridPoint, recommend
from sbif_dsl.sampling import SGLDConfig
from sbif_dsl.sampling.diagnostics import run_calibration_chains, stationarity
from sbif_dsl.store import Store, fetch_frame

from .conftest import sbif

F64 = torch.float64


def _quartic(p, xb, yb):
    """A non-Gaussian energy: L(w) = mean_b ¼ Σ_k (w_k − x_bk)⁴, so the MALA correction is not trivially exact."""
    return 0.25 * ((p["w"] - xb) ** 4).sum(dim=-1)  # (B,)


@pytest.mark.parametrize("method", ["sgld", "rmsprop_sgld"])
def test_mala_acceptance_matches_hand_computation(method):
    x = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=F64)
    w0 = torch.tensor([0.5, -0.5], dtype=F64)
    cfg = SGLDConfig(method=method, eps=0.1, gamma=3.0, nbeta=5.0, chains=4, draws=1, weight_decay=0.1)
    res = run_calibration_chains(_quartic, {"w": w0}, (x, torch.zeros(2, dtype=F64)), cfg, seed=7)

    def U(w):  # (chains,) energy of the localized tempered posterior
        L = 0.25 * ((w[:, None, :] - x) ** 4).sum(-1).mean(-1)
        return cfg.nbeta * L + cfg.gamma / 2 * ((w - w0) ** 2).sum(-1) + cfg.weight_decay / 2 * (w**2).sum(-1)

    def grad_U(w):
        gL = ((w[:, None, :] - x) ** 3).mean(1)
        return cfg.nbeta * gL + cfg.gamma * (w - w0) + cfg.weight_decay * w

    noise = torch.randn((4, 2), generator=torch.Generator().manual_seed(7), dtype=F64)  # (chains, params)
    w = w0.expand(4, -1)
    g_raw = ((w[:, None, :] - x) ** 3).mean(1)
    G = 1 / ((0.01 * g_raw**2).sqrt() + cfg.rmsprop_eps) if method == "rmsprop_sgld" else torch.ones_like(w)
    w_new = w - cfg.eps / 2 * G * grad_U(w) + math.sqrt(cfg.eps) * G.sqrt() * noise
    fwd = -(((w_new - (w - cfg.eps / 2 * G * grad_U(w))) ** 2) / G).sum(-1) / (2 * cfg.eps)
    bwd = -(((w - (w_new - cfg.eps / 2 * G * grad_U(w_new))) ** 2) / G).sum(-1) / (2 * cfg.eps)
    alpha = torch.exp(torch.clamp(U(w) - U(w_new) + bwd - fwd, max=0))
    torch.testing.assert_close(res.acceptance[:, 0], alpha, rtol=1e-12, atol=1e-12)
    assert (res.acceptance < 0.99).sum() >= 2  # not a vacuous check: several proposals are really corrected
    torch.testing.assert_close(res.batch_losses[:, 0], 0.25 * ((w[:, None, :] - x) ** 4).sum(-1).mean(-1))


def test_acceptance_falls_with_step_size():
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    rates = []
    for eps in (1e-4, 1e-3, 1e-2):
        cfg = SGLDConfig(eps=eps, gamma=10.0, nbeta=50.0, chains=8, draws=200, burn_in=50)
        res = run_calibration_chains(
            _quartic, {"w": torch.zeros(3, dtype=F64)}, (x, torch.zeros(16, dtype=F64)), cfg, seed=1
        )
        rates.append(float(res.acceptance.mean()))
    assert rates[0] > 0.99 and rates[0] > rates[1] > rates[2]


def test_divergent_chains_are_recorded_not_raised():
    x = torch.zeros(4, 2, dtype=F64)
    cfg = SGLDConfig(eps=0.5, gamma=0.0, nbeta=1e6, chains=3, draws=20)
    res = run_calibration_chains(
        _quartic, {"w": torch.full((2,), 0.5, dtype=F64)}, (x, torch.zeros(4, dtype=F64)), cfg, seed=0
    )
    assert (res.diverged_at >= 0).all() and (res.diverged_at <= 1).all()


def test_stationarity_statistics():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 400, generator=g, dtype=F64)
    ar = torch.zeros_like(noise)
    for t in range(1, 400):
        ar[:, t] = 0.5 * ar[:, t - 1] + noise[:, t]  # stationary AR(1), τ = 3
    trend, shift = stationarity(ar)
    assert abs(float(trend.mean())) < 0.2 and abs(float(shift.mean())) < 0.2
    ramp = ar + torch.linspace(0, 6, 400, dtype=F64)  # drifts 3 units over the second half; its std is ~1.7
    trend, shift = stationarity(ramp)
    assert float(trend.mean()) > 1.0 and float(shift.mean()) > 1.0


def _point(eps, gamma, llc, acc, div=0, stationary=True):
    from sbif_dsl.spec.models import Sampler

    p = GridPoint({"eps": eps, "gamma": gamma}, Sampler(eps=eps, gamma=gamma))
    p.summary = {
        "llc_mean": llc,
        "llc_std": 0.1,
        "trend": 0.0,
        "half_shift": 0.0,
        "stationary": stationary,
        "acceptance": acc,
        "divergences": div,
    }
    return p


def test_recommendation_rule():
    small, big, bad_acc, diverged = (
        _point(1e-6, 1e5, 4.0, 0.95),
        _point(1e-5, 1e4, 5.0, 0.92),
        _point(1e-5, 1e5, 5.0, 0.55),
        _point(1e-4, 1e3, 5.0, 0.99, div=2),
    )
    choice, why = recommend([small, big, bad_acc, diverged])
    assert choice is big and "2 of 4 settings are healthy" in why[0]  # weakest healthy γ
    weak, fast = _point(6e-4, 1.0, 5.6, 0.97), _point(3e-3, 100.0, 1.1, 0.90)
    assert recommend([fast, weak])[0] is weak  # γ first: a strong pull shrinks the LLC, it is not "better"
    assert recommend([_point(1e-5, 1e4, 5.0, 0.93), _point(1e-6, 1e4, 5.0, 0.99)])[0].overrides["eps"] == 1e-5
    # mid-training checkpoint: every LLC < 0; the most local stable setting with good acceptance wins
    choice, why = recommend([_point(1e-6, 1e5, -86.0, 0.93), _point(1e-5, 1e4, -1261.0, 0.92)])
    assert choice.overrides["gamma"] == 1e5 and "not a local minimum" in why[0]
    choice, why = recommend([_point(1e-5, 1e5, 5.0, 0.55), _point(3e-6, 1e5, 5.0, 0.75)])
    assert choice.overrides["eps"] == 3e-6 and "No setting passes every check" in why[0]
    assert recommend([diverged])[0] is None


def test_calibrate_cli(tiny_spec, cache_path):
    sbif("run", str(tiny_spec), cache=cache_path)
    out = sbif(
        "calibrate",
        str(tiny_spec),
        "--checkpoint",
        "60",
        "--grid",
        "eps=1e-4,1e-3,1e-2",
        "gamma=1000",
        "nbeta=100",
        cache=cache_path,
    ).stdout
    assert "at checkpoint step 60 (2 stages run" in out
    assert "skipped: sampler: eps*gamma/2 = 5 >= 1" in out and "recommendation:" in out

    def q(sql):  # the views, in process (the CLI's query path is tested elsewhere)
        with Store(cache_path).connect(read_only=True) as con:
            return fetch_frame(con, sql).to_dicts()

    rows = json.loads(
        sbif("query", "SELECT * FROM calibration ORDER BY eps", "--format", "json", cache=cache_path).stdout
    )
    assert [(r["study"], r["step"], r["eps"], r["chains"]) for r in rows] == [
        ("tiny", 60, 1e-4, 3),
        ("tiny", 60, 1e-3, 3),
    ]
    assert rows[0]["acceptance"] > rows[1]["acceptance"] and all(r["divergences"] == 0 for r in rows)
    # the spec's own setting is keyed like its sample stage and samples the same chains: same draws, same LLC
    same = q("""SELECT count(*) AS n, bool_and(b.loss = d.loss) AS equal FROM batch_losses b
                JOIN calibration_draws d USING (study, step, chain, draw) WHERE d.eps = 1e-4""")[0]
    assert same == {"n": 3 * 20, "equal": True}
    llc = q("SELECT llc_mean, llc_std FROM llc_summary WHERE step = 60")[0]
    assert rows[0]["llc_mean"] == pytest.approx(llc["llc_mean"], rel=1e-12)
    assert len(q("SELECT * FROM calibration_chains")) == 2 * 3

    again = sbif(
        "calibrate", str(tiny_spec), "--checkpoint", "60", "--grid", "eps=1e-4,1e-3", "gamma=1000", cache=cache_path
    ).stdout
    assert "(0 stages run" in again
    assert "dropped 0 stages" in sbif("cache", "gc", cache=cache_path).stdout  # calibrations survive gc
    assert q("SELECT count(*) AS n FROM stages WHERE study = 'tiny'")[0]["n"] == 19  # the study is untouched


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--grid", "epsilon=1e-4"], "'epsilon' is not a sampler field; fields: batch_size, burn_in"),
        (["--grid", "eps"], "expected KEY=V1,V2,... e.g. eps=1e-5,1e-4"),
        (["--checkpoint", "11"], "--checkpoint 11: not a checkpoint of this spec; steps: 10, 30, 60"),
    ],
)
def test_calibrate_usage_errors(tiny_spec, cache_path, args, expect):
    proc = sbif("calibrate", str(tiny_spec), *args, cache=cache_path, check=False)
    assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr

"""The adaptive sampler (sampling/auto.py, `eps: auto` / `draws: auto`): the step size it adapts to, the burn-in
and draws it chooses, determinism, the budget as a verdict, what it records in SQL, and the keys it changes."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from sbif_dsl.sampling import SGLDConfig, run_chains, screens
from sbif_dsl.sampling.auto import AutoConfig, initial_eps, max_eps, run_auto

from .conftest import TINY_SPEC, sbif, write_spec
from .factories_for_tests import regression, squared

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only contend


@functools.cache
def _regression():
    """Linear regression at its least-squares solution (float64): a Gaussian posterior of known curvature. Cached:
    lstsq is not bitwise reproducible across calls here, and the determinism check needs the same w*."""
    ds = regression(n=12, d=3, noise=0.5)
    x, y = ds.train.inputs.double(), ds.train.targets.double()
    w_star = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]

    def loss(params, xb, yb):
        return squared(xb @ params["w"][:, None], yb)

    return loss, {"w": w_star}, (x, y)


def _auto_run(policy: AutoConfig, gamma: float, nbeta: float, seed: int = 0, chains: int = 8):
    loss, params, train = _regression()
    cfg = SGLDConfig(eps=initial_eps(gamma, policy.max_pull), gamma=gamma, nbeta=nbeta, chains=chains,
                     draws=policy.max_draws)  # fmt: skip
    return run_auto(loss, params, train, [train], cfg, policy, seed=seed)


def test_dual_averaging_reaches_the_target_acceptance_where_the_cap_does_not_bind():
    """γ 1 (the cap εγ/2 ≤ 0.1 is ε ≤ 0.2, far above what nβ 2000 allows): ε is set by the acceptance alone, and
    the frozen ε's acceptance is near the target; a tighter target gives a smaller ε."""
    res = _auto_run(AutoConfig(eps=True, draws=False, max_draws=50), gamma=1.0, nbeta=2000.0)
    s = res.schedule
    assert s["eps"] < max_eps(1.0, 0.1) / 10 and not s["eps_capped"]
    assert abs(s["acceptance"] - 0.9) < 0.05, s
    strict = _auto_run(AutoConfig(eps=True, draws=False, max_draws=50, target_acceptance=0.98), 1.0, 2000.0)
    assert strict.schedule["eps"] < s["eps"] and strict.schedule["acceptance"] > s["acceptance"]


def test_the_localization_cap_binds_where_the_loss_is_flat():
    """γ 1e4 with nβ 10: the loss barely adds curvature, so every ε up to the cap is accepted: εγ/2 = 0.1."""
    res = _auto_run(AutoConfig(eps=True, draws=False, max_draws=50), gamma=1e4, nbeta=10.0)
    assert res.schedule["eps_capped"] and res.schedule["eps"] * 1e4 / 2 == pytest.approx(0.1)


def test_auto_draws_stop_when_the_screens_pass_and_are_deterministic():
    """draws: auto draws rounds until the convergence screens pass: at the stop they do (and one round earlier
    they did not, or it is the first round); the same config and seed give bitwise the same draws."""
    policy = AutoConfig(eps=True, draws=True, check_every=50, max_draws=2000)
    a, b = _auto_run(policy, 24.0, 24.0), _auto_run(policy, 24.0, 24.0)
    assert a.schedule["stop"] == "converged", a.schedule
    assert torch.equal(a.traces[0], b.traces[0]) and torch.equal(a.batch_losses, b.batch_losses)
    assert json.dumps(a.schedule) == json.dumps(b.schedule)
    rows = screens.statistics({"train": a.traces[0].numpy()}, a.batch_losses.numpy())
    assert not [f for f in screens.findings(rows) if f.kind == screens.CONVERGENCE]
    rounds = a.schedule["rounds"]
    assert rounds[-1]["converged"] and not any(r["converged"] for r in rounds[:-1])
    assert a.traces[0].shape[1] == a.schedule["draws"] == rounds[-1]["draws"]
    assert a.schedule["burn_in_stop"] == "stationary" and a.schedule["steps_between_draws"] >= 1
    assert not torch.equal(_auto_run(policy, 24.0, 24.0, seed=1).batch_losses[:, :10], a.batch_losses[:, :10])


def test_a_fixed_schedule_through_the_auto_runner_is_run_chains():
    """eps and draws both fixed (a policy that adapts nothing): the same draws as `run_chains`."""
    loss, params, train = _regression()
    cfg = SGLDConfig(eps=1e-3, gamma=24.0, nbeta=24.0, chains=4, draws=30, burn_in=10, steps_between_draws=2)
    fixed = run_chains(loss, params, train, [train], cfg, seed=5)
    auto = run_auto(loss, params, train, [train], cfg, AutoConfig(eps=False, draws=False), seed=5)
    assert torch.equal(fixed.traces[0], auto.traces[0]) and torch.equal(fixed.batch_losses, auto.batch_losses)


# ----------------------------------------------------------------------------- through a spec and the CLI

AUTO = TINY_SPEC.replace("steps: 60\n", "steps: 400\n").replace("steps: [10, 30, 60]", "steps: [10, 400]")
AUTO = AUTO.replace("  eps: 1.0e-4\n", "  eps: auto\n").replace("  draws: 20\n", "  draws: auto\n")
AUTO = AUTO.replace("chains: 3", "chains: 4")


def _query(sql: str, cache) -> list[dict]:
    return json.loads(sbif("query", sql, "--format", "json", cache=cache).stdout)


def test_auto_sampler_end_to_end_records_what_it_chose(tmp_path):
    spec, cache = write_spec(tmp_path, AUTO), tmp_path / "c.duckdb"
    out = sbif("run", str(spec), cache=cache).stdout
    assert "screens: all 2 checkpoints ok" in out, out
    rows = _query("SELECT * FROM sampler_schedule ORDER BY step", cache)
    assert [r["step"] for r in rows] == [10, 400]
    for r in rows:
        assert r["eps_policy"] == r["draws_policy"] == "auto" and r["stop"] == "converged", r
        assert r["pull"] <= 0.1 + 1e-12 and r["acceptance"] > 0.5 and r["burn_in"] >= 200 and r["draws"] >= 100
    rounds = _query("SELECT * FROM sampler_rounds WHERE step = 10 ORDER BY round", cache)
    assert rounds[-1]["converged"] and rounds[-1]["draws"] == rows[0]["draws"]
    shapes = _query("SELECT step, max(draw) + 1 AS draws FROM loss_traces GROUP BY step ORDER BY step", cache)
    assert [s["draws"] for s in shapes] == [r["draws"] for r in rows]  # what was drawn is what analyses read

    # An exhausted budget is a verdict: 16 draws cannot pass the ESS screen, and `sbif run` says so.
    tight = ["--set", "sampler.auto.max_draws=16", "--set", "sampler.auto.check_every=8"]
    out = sbif("run", str(spec), *tight, cache=cache).stdout
    assert "ran 4 of" not in out and "max_draws ran out before the screens passed" in out, out
    assert "Hint: a larger sampler.auto.max_draws" in out
    stops = {r["stop"] for r in _query("SELECT stop FROM sampler_schedule WHERE draws = 16", cache)}
    assert stops == {"budget: max_draws"}

    # A fixed schedule records its config; the auto policy is not in its key.
    sbif("run", str(spec), "--set", "sampler.eps=1e-4", "--set", "sampler.draws=20", cache=cache)
    fixed = _query("SELECT * FROM sampler_schedule WHERE eps_policy = 'fixed'", cache)
    assert {(r["draws"], r["stop"]) for r in fixed} == {(20, "fixed schedule")}
    again = sbif("run", str(spec), "--set", "sampler.eps=1e-4", "--set", "sampler.draws=20", "--set",
                 "sampler.auto.max_draws=99", cache=cache).stdout  # fmt: skip
    assert "nothing to compute" in again


def test_the_validator_warns_on_a_strong_localization_step(tmp_path):
    """εγ/2 = 0.5 runs (below the divergence bound 1) but biases every covariance: a warning with the file, line
    and field, exit 0; inside the rule, no warning; eps: auto never warns."""
    text = TINY_SPEC.replace("  eps: 1.0e-4\n", "  eps: 1.0e-3\n")
    proc = sbif("validate", str(write_spec(tmp_path, text)))
    assert proc.returncode == 0 and "warning:" in proc.stderr and "sampler.eps: eps*gamma/2 = 0.5 > 0.1" in proc.stderr
    assert "spec.yaml:26: sampler.eps" in proc.stderr  # the line of eps in the spec
    assert "warning" not in sbif("validate", str(write_spec(tmp_path, TINY_SPEC, "ok.yaml"))).stderr
    assert "warning" not in sbif("validate", str(write_spec(tmp_path, AUTO, "auto.yaml"))).stderr
    bad = sbif(
        "validate", str(write_spec(tmp_path, AUTO.replace("eps: auto", "eps: sometimes"), "b.yaml")), check=False
    )
    assert bad.returncode == 2 and "sampler.eps" in bad.stderr and "Traceback" not in bad.stderr


def test_calibrate_asks_for_numbers_when_the_spec_is_auto(tmp_path):
    spec, cache = write_spec(tmp_path, AUTO), tmp_path / "c.duckdb"
    proc = sbif("calibrate", str(spec), "--checkpoint", "10", cache=cache, check=False)
    assert proc.returncode == 2 and "eps is auto" in proc.stderr and "Traceback" not in proc.stderr


def test_a_diverging_burn_in_fails_at_once():
    """A fixed ε far too large with draws: auto: the burn-in's first window is non-finite and the run stops there
    (NonFiniteError), instead of burning the whole max_burn_in budget on NaN."""
    from sbif_dsl.errors import NonFiniteError

    loss, params, train = _regression()
    cfg = SGLDConfig(eps=50.0, gamma=0.0, nbeta=1e4, chains=2, draws=10)
    with pytest.raises(NonFiniteError, match="chain 0 became non-finite"):
        run_auto(loss, params, train, [train], cfg, AutoConfig(eps=False, draws=True, max_burn_in=10_000), seed=0)

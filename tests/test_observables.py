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


# ----------------------------------------------------------------------------- python hooks: contract and keys

HOOK_SPEC = """\
    name: hooks
    seed: 1
    device: cpu
    data:
      kind: python
      factory: tests.factories_for_tests:regression
      options: {n: 10, d: 3}
    model: {kind: python, factory: tests.factories_for_tests:linear}
    training: {lr: 0.1, steps: 20, checkpoints: {steps: [20], include_zero: false}}
    observables:
      - {name: train, data: train}
      - {name: pred, kind: python, factory: "tests.factories_for_tests:prediction", data: probe}
      - {name: norm, kind: python, factory: "tests.factories_for_tests:weight_norm", call: params, reduce: mean}
      - {name: local, kind: python, factory: "myhooks:cube", data: probe, reduce: mean}
    sampler: {eps: 1.0e-3, gamma: 100, nbeta: 10, chains: 2, draws: 30, burn_in: 10}
    analyses:
      - {kind: bif, name: on_pred, source: train, target: pred}
      - {kind: bif, name: on_norm, source: train, target: norm}
      - {kind: bif, name: on_local, source: train, target: local}
    """


def _error(proc) -> str:
    """The CLI's one-line error (exit 2, no traceback)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_python_hooks_run_are_hashed_and_their_contract_errors_are_one_line(tmp_path, cache_path):
    (tmp_path / "myhooks.py").write_text("def cube(outputs, targets):\n    return outputs.squeeze(-1) ** 3\n")
    spec = write_spec(tmp_path, HOOK_SPEC)
    sbif("run", str(spec), cache=cache_path)
    rows = json.loads(
        sbif("query", "SELECT analysis, target, bif_cov FROM bif", "--format", "json", cache=cache_path).stdout
    )
    by = {a: [r for r in rows if r["analysis"] == a] for a in ("on_pred", "on_norm", "on_local")}
    assert len(by["on_pred"]) == 10 * 3 and {r["target"] for r in by["on_pred"]} == {"probe_a", "probe_b", "probe_c"}
    assert len(by["on_norm"]) == len(by["on_local"]) == 10 and {r["target"] for r in by["on_norm"]} == {"mean"}
    assert all(math.isfinite(r["bif_cov"]) for r in rows)
    norm = sb.connect(cache_path).sql("SELECT loss FROM loss_traces WHERE observable = 'norm'")["loss"]
    assert norm.n_unique() > 1 and (norm > 0).all()  # |w|² moves with the chains

    # Editing a hook's source re-samples (its hash is in the sample key).
    (tmp_path / "myhooks.py").write_text("def cube(outputs, targets):\n    return 2 * outputs.squeeze(-1) ** 3\n")
    plan = sb.load(spec, cache=cache_path).plan()
    assert set(plan.filter(~plan["cached"])["kind"]) == {"sample", "bif"}

    def run(text: str, name: str):
        return sbif("run", str(write_spec(tmp_path, text, name)), cache=cache_path, check=False)

    # Through the CLI: exit 2 and one line, at the checkpoint's first sample stage.
    line = _error(run(HOOK_SPEC.replace(":prediction", ":summed_prediction"), "a.yaml"))
    assert "observable 'pred' (python)" in line and "expected one value per sample [2]" in line
    line = _error(run(HOOK_SPEC.replace(":prediction", ":strict_hook"), "b.yaml"))
    assert "hook 'tests.factories_for_tests:strict_hook'" in line and "rejected its arguments" in line

    # Through the API: the same typed errors (the CLI maps each to exit 2).
    def error(text: str, name: str) -> str:
        with pytest.raises((sb.SpecError, sb.ContractError, sb.UsageError)) as e:
            sb.load(write_spec(tmp_path, text, name), cache=cache_path).run()
        assert e.value.exit_code == 2 and "\n" not in str(e.value)
        return str(e.value)

    assert "expected a floating dtype" in error(HOOK_SPEC.replace(":prediction", ":integer_prediction"), "c.yaml")
    assert "cannot import module 'nowhere.mod'" in error(
        HOOK_SPEC.replace("myhooks:cube", "nowhere.mod:cube"), "d.yaml"
    )
    assert "has no callable 'square'" in error(HOOK_SPEC.replace("myhooks:cube", "myhooks:square"), "e.yaml")
    assert "f.yaml:13: observables.2.call: Input should be 'outputs' or 'params'" in error(
        HOOK_SPEC.replace("call: params", "call: gradients"), "f.yaml"
    )
    kernel = "- {kind: loss_kernel, observable: pred}\n      - {kind: bif, name: on_pred"
    assert "loss_kernel.observable reads losses; observable 'pred' is kind 'python'" in error(
        HOOK_SPEC.replace("- {kind: bif, name: on_pred", kernel), "g.yaml"
    )
    assert "bif.source reads losses" in error(
        HOOK_SPEC.replace("source: train, target: pred", "source: pred, target: train"), "h.yaml"
    )
    induction = "reduce: mean}\n      - {name: ind, kind: induction_score}\n      - {name: local"
    assert "induction_score needs the built-in transformer" in error(
        HOOK_SPEC.replace("reduce: mean}\n      - {name: local", induction), "i.yaml"
    )


# ----------------------------------------------------------------------------- a language model's observables

LM_SPEC = """\
    name: tiny_lm_obs
    seed: 1
    device: cpu
    data: {kind: synthetic_language, n_train: 256, n_query: 6, context: 48}
    model: {kind: transformer, n_layers: 2, n_heads: 2, d_model: 32}
    training:
      optimizer: adamw
      lr: 0.001
      steps: 30
      batch_size: 16
      checkpoints: {steps: [0, 30]}
    observables:
      - {name: query, data: query}
      - {name: margin, kind: logit_diff, data: query}
      - {name: prob, kind: target_prob, data: query}
      - {name: acc, kind: accuracy, data: query}
      - {name: correct, kind: accuracy, data: query, reduce: per_sample}
      - {name: ind, kind: induction_score, n_seqs: 4}
      - {name: ind10, kind: induction_score, n_seqs: 4, layer: 1, head: 0}
      - {name: sources, data: train, first: 8}
    sampler: {eps: 1.0e-4, gamma: 1000, nbeta: 10, chains: 2, draws: 12, burn_in: 2, batch_size: 16}
    analyses:
      - {kind: bif, name: on_margin, source: sources, target: margin}
      - {kind: bif, name: on_acc, source: sources, target: acc}
      - {kind: bif, name: on_ind, source: sources, target: ind}
      - {kind: induction_score, n_seqs: 4}
      - {kind: observable_summary}
      - {kind: class_bif, name: classes_on_prob, observable: query, target: prob}
      - {kind: class_bif, name: classes_on_ind, observable: query, target: ind}
      - {kind: class_bif, observable: query}
    """


def test_output_and_induction_observables_of_a_language_model(tmp_path, cache_path):
    """Every observable kind of a transformer, recorded at every draw: the output observables share the loss's
    forward pass, so at every draw and token exp(−loss) is the target probability and a positive margin is a
    correct prediction; the induction-score observable at the draws sits at the analysis' score at w*."""
    sbif("run", str(write_spec(tmp_path, LM_SPEC)), cache=cache_path)
    con = sb.connect(cache_path)

    def one(sql: str):
        return con.sql(sql).row(0)

    pairs = "FROM loss_traces a JOIN loss_traces b USING (step, chain, draw, sample_idx, pos) WHERE a.observable = "
    (gap, n) = one(f"SELECT max(abs(exp(-a.loss) - b.loss)), count(*) {pairs} 'query' AND b.observable = 'prob'")
    assert n == 2 * 2 * 12 * 6 * 47 and gap < 1e-6
    (wrong, n) = one(
        f"SELECT count_if((a.loss > 0) <> (b.loss = 1)), count(*) {pairs} 'margin' AND b.observable = 'correct'"
    )
    assert wrong == 0 and n == 2 * 2 * 12 * 6 * 47
    (bad_acc,) = one(
        "SELECT count(*) FROM (SELECT step, chain, draw, avg(loss) AS a FROM loss_traces WHERE observable = 'correct'"
        " GROUP BY ALL) c JOIN loss_traces t USING (step, chain, draw)"
        " WHERE t.observable = 'acc' AND abs(t.loss - c.a) > 1e-6"
    )
    assert bad_acc == 0  # reduce: mean is the mean of the per-sample values
    shapes = con.sql("SELECT analysis, count(*) AS n, count(DISTINCT target) AS t FROM bif GROUP BY 1 ORDER BY 1")
    assert shapes.rows() == [("on_acc", 2 * 8, 1), ("on_ind", 2 * 8, 1), ("on_margin", 2 * 8 * 6, 6)]
    (above,) = one(f"SELECT count_if(b.loss > a.loss + 1e-7) {pairs} 'ind' AND b.observable = 'ind10'")
    assert above == 0  # one head never scores above the max over heads
    draws = con.sql(
        "SELECT step, observable, avg(loss) AS m, min(loss) AS lo, max(loss) AS hi FROM loss_traces"
        " WHERE observable IN ('ind', 'ind10') GROUP BY ALL ORDER BY ALL"
    )
    scores = dict(con.sql("SELECT step, score FROM induction_score ORDER BY step").rows())
    for step, obs, mean, lo, hi in draws.rows():
        assert 0 <= lo <= hi <= 1 and lo < hi
        if obs == "ind":  # max over heads, as the analysis: the draws stay near w* at this ε
            assert abs(mean - scores[step]) < 0.05 * scores[step], (step, mean, scores[step])

    # class-level source aggregation for token observables: source token classes x the target's token classes
    # (a per-token observable of the same set) or x one class named after a scalar observable
    cls = con.sql(
        "SELECT analysis, target_observable, count(DISTINCT source_class) AS s, count(DISTINCT target_class) AS t,"
        " count(*) AS n, list(DISTINCT target_class) AS names, max(abs(bif_corr)) AS m, count(bif_corr_se) AS se,"
        " count(bif_corr) AS defined, count(*) FILTER (n_source > 0 AND n_target > 0) AS nonempty"
        " FROM class_bif WHERE step = 30 GROUP BY ALL ORDER BY analysis"
    ).rows()
    (own, on_ind, on_prob) = cls
    assert own[:2] == ("class_bif", "query") and own[3] == own[2] and own[4] == own[2] ** 2
    assert on_prob[:2] == ("classes_on_prob", "prob") and on_prob[2:5] == own[2:5] and on_prob[6] <= 1
    assert on_ind[:2] == ("classes_on_ind", "ind") and on_ind[3:6] == (1, own[2], ["ind"]) and on_ind[6] <= 1
    assert all(r[7] == r[8] for r in cls)  # every defined value has its jackknife standard error
    assert on_prob[8] == on_prob[9] and on_ind[8] == on_ind[9]  # another target: no self-pairs; empty classes NULL
    assert own[9] - own[2] <= own[8] <= own[9]  # own losses: also a one-token class's block with itself

    summary = con.sql(
        "SELECT s.step, s.observable, s.n_items, s.mean, s.mean_se, s.sd, a.m FROM observable_summary s JOIN"
        " (SELECT step, observable, avg(loss) AS m FROM loss_traces GROUP BY ALL) a USING (step, observable)"
    )
    assert summary.height == 2 * 8
    for step, obs, n_items, mean, se, sd, direct in summary.rows():
        assert abs(mean - direct) < 1e-6 * max(1.0, abs(direct)) and se >= 0 and sd > 0, (step, obs)
        assert (n_items == 1) == (obs in ("acc", "ind", "ind10")), obs
    other_set = LM_SPEC.replace("observable: query, target: prob}", "observable: query, target: sources}")
    proc = sbif("validate", str(write_spec(tmp_path, other_set, name="other.yaml")), check=False)
    assert proc.returncode == 2 and "class_bif target 'sources' tracks data set 'train'" in proc.stderr, proc.stderr


def test_the_induction_observables_spec_shares_the_checkpoints_of_induction_lm():
    """specs/induction_lm_observables.yaml claims the training of induction_lm.yaml (one cache trains once): every
    block a checkpoint's key reads is the same (the keys themselves: tests/test_kinds.py pins induction-like plans)."""
    from sbif_dsl.spec import load_spec

    from .conftest import REPO

    base, variant = (
        load_spec(REPO / "specs" / n).study for n in ("induction_lm.yaml", "induction_lm_observables.yaml")
    )
    for block in ("data", "model"):
        assert getattr(base, block).key_params() == getattr(variant, block).key_params(), block
    assert base.training.key_params() == variant.training.key_params()
    assert (base.seed, base.dtype, base.device) == (variant.seed, variant.dtype, variant.device)
    assert set(variant.training.checkpoint_steps()) <= set(base.training.checkpoint_steps())

"""Sample stage: SGLD chains around one checkpoint, recording every observable at every draw (`observables/`: a
sample set's losses, functions of its outputs in the same forward pass, induction scores, user hooks).

Traces are stored as one Parquet artifact (long format, read by the `loss_traces` view and by every analysis over
draws, through `stages/traces.py`); the minibatch losses feed the LLC. The spec's sampler block is converted once,
here at plan time, into the run-time config the stage's params hold (nβ and the minibatch resolved).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..hashing import derive_seed
from .base import Inputs, Stage, StageMeta, StageOutput
from .kind import Kind, Table, View

RMSPROP_FIELDS = ("rmsprop_alpha", "rmsprop_eps")  # keyed only for the method that uses them


def sampler_config(rt, sampler=None) -> dict:
    """The run-time SGLD config (`SGLDConfig` fields) of a spec sampler block (default: the study's)."""
    from ..sampling import default_nbeta

    s = sampler if sampler is not None else rt.study.sampler
    n_train = len(rt.dataset.train)
    batch = min(s.batch_size or n_train, n_train)
    cfg = {**s.key_params(), "nbeta": s.nbeta or default_nbeta(batch), "batch_size": batch}
    if cfg["method"] != "rmsprop_sgld":
        for name in RMSPROP_FIELDS:
            cfg.pop(name)
    if not s.adaptive:
        cfg.pop("auto")  # keyed only for the adaptive sampler: fixed schedules keep their keys
    return cfg


def chain_config(sampler: dict):
    """(SGLDConfig, AutoConfig or None) of a stage's resolved sampler params: an auto ε starts from the policy's
    first guess, auto draws from its budget (`sampling.auto`)."""
    from ..sampling import SGLDConfig
    from ..sampling.auto import AutoConfig, initial_eps

    fields = dict(sampler)
    policy = fields.pop("auto", None)
    if policy is None:
        return SGLDConfig(**fields), None
    auto = AutoConfig(eps=fields["eps"] == "auto", draws=fields["draws"] == "auto", **policy)
    if auto.draws:
        fields["draws"] = auto.max_draws
    if auto.eps:
        fields["eps"] = initial_eps(fields["gamma"], auto.max_pull)
    return SGLDConfig(**fields), auto


def sampling_params(rt, checkpoint: Stage, cfg: dict) -> dict:
    """What a set of chains at a checkpoint depends on besides its inputs (shared with calibration, whose grid
    point with the spec's own sampler reproduces the sample stage's chains)."""
    return {
        "sampler": cfg,
        "seed": derive_seed(rt.study.seed, "sample", checkpoint.key),
        "dtype": rt.study.dtype,
        "device": rt.study.device,
    }


def build(rt, checkpoint: Stage, dataset_key: str) -> Stage:
    from ..observables.kinds import observable_key

    return Stage(
        kind="sample",
        version=KIND.version,
        params={
            **sampling_params(rt, checkpoint, sampler_config(rt)),
            "observables": [observable_key(rt, o) for o in rt.study.observables],
        },
        inputs=(checkpoint.key, dataset_key),
        meta=StageMeta(step=checkpoint.step, parent=checkpoint.key, label=f"sample at step {checkpoint.step}"),
    )


def _write_traces(path: Path, traces: dict, dtype: str) -> None:
    """Long format in (chain, draw, sample, pos) order, so reading back is a reshape; losses at the study's
    dtype (float64 kept bitwise; float32 otherwise, bfloat16-precision runs included)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for obs, arr in traces.items():
        arr4 = arr if arr.ndim == 4 else arr[..., None]  # (chains, draws, n, T)
        c, d, n, t = arr4.shape
        chain, draw, idx, pos = (a.ravel() for a in np.indices((c, d, n, t), dtype=np.int32))
        parts.append(
            pa.table(
                {
                    "observable": pa.DictionaryArray.from_arrays(np.zeros(chain.size, np.int32), [obs]),
                    "sample_idx": idx,
                    "pos": pos,
                    "chain": chain,
                    "draw": draw,
                    "loss": arr4.astype(np.float64 if dtype == "float64" else np.float32, copy=False).ravel(),
                }
            )
        )
    pq.write_table(pa.concat_tables(parts), path, compression="zstd")


def _diagnostics_rows(traces: dict, batch_losses, init_loss: float, gradient) -> dict:
    """The convergence screens of this checkpoint's chains (`sampling.screens`): per observable and for the minibatch
    loss, one row over all chains and one per chain; every row carries the checkpoint's verdicts under the default
    thresholds (the spec's `diagnostics:` thresholds only change what `sbif run` prints and the report shows)."""
    from ..sampling import screens

    rows = screens.statistics(traces, batch_losses, init_loss, gradient)
    verdict, reason = screens.verdict(rows)
    kinds = screens.verdicts(rows)
    return {
        **{c: [r[c] for r in rows] for c in screens.COLUMNS},
        "verdict": [verdict] * len(rows),
        "reason": [reason] * len(rows),
        **{k: [v] * len(rows) for k, v in kinds.items()},
    }


SCHEDULE_COLUMNS = (
    "eps_policy", "draws_policy", "eps", "pull", "acceptance", "adapt_steps", "burn_in", "burn_in_stop", "tau_steps",
    "steps_between_draws", "draws", "stop",
)  # fmt: skip


def _schedule_tables(schedule: dict | None, cfg) -> dict:
    """What the sampler ran at this checkpoint, and why (`sampling.auto`): one row, and one per round of draws of
    an adaptive run. A fixed schedule is its config."""
    if schedule is None:
        schedule = {
            "eps_policy": "fixed", "draws_policy": "fixed", "eps": cfg.eps, "burn_in": cfg.burn_in,
            "steps_between_draws": cfg.steps_between_draws, "draws": cfg.draws, "stop": "fixed schedule",
        }  # fmt: skip
    row = {c: [schedule.get(c)] for c in SCHEDULE_COLUMNS}
    row["pull"] = [schedule["eps"] * cfg.gamma / 2]
    rounds = schedule.get("rounds", [])
    return {
        "r_schedule": row,
        "r_schedule_rounds": {
            "round": list(range(len(rounds))),
            **{c: [r[c] for r in rounds] for c in ("draws", "converged", "findings")},
        },
    }


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np
    import torch

    from ..errors import NonFiniteError
    from ..observables import tracking
    from ..sampling import run_chains
    from ..sampling.auto import run_auto
    from ..sampling.screens import Gradient

    p = stage.params
    module = rt.module_at(inputs.file(stage.inputs[0], "state.pt"))
    rt.check_loss_contract(module)
    params0 = {k: v.detach() for k, v in module.named_parameters()}
    sets = rt.dataset.sets()
    train = (rt.on_device(sets["train"].inputs), rt.on_device(sets["train"].targets))
    specs = [tracking.spec_of(o) for o in p["observables"]]
    batches = tracking.plan(rt, module, specs, sets)  # each observable's contract checked at w*
    cfg, policy = chain_config(p["sampler"])
    run = run_chains if policy is None else functools.partial(run_auto, policy=policy)
    try:
        res = run(
            rt.loss_fn(module), params0, train, [(b.x, b.y) for b in batches], cfg,
            seed=p["seed"], progress=progress, replicate=rt.loss_fn_replica(module),
            measures=[b.measure for b in batches],
        )  # fmt: skip
    except NonFiniteError as e:
        raise NonFiniteError(e.chain, e.draw, context=f"checkpoint step {stage.step}") from None

    values = tracking.split(batches, res.traces)
    traces = {s.name: values[s.name].numpy() for s in specs}
    summary = {"init_loss": res.init_loss, "nbeta": cfg.nbeta, "shapes": {k: list(v.shape) for k, v in traces.items()}}
    _write_traces(out_dir / "traces.parquet", traces, p["dtype"])
    (out_dir / "summary.json").write_text(json.dumps(summary))
    bl = res.batch_losses.to(torch.float64).numpy()  # (chains, draws)
    np.save(out_dir / "batch_losses.npy", bl)

    parts = {part.name: part for b in batches for part in b.parts}
    tracked_rows: dict[str, list] = {"observable": [], "data_set": [], "sample_idx": [], "sample_name": []}
    for s in specs:
        names = parts[s.name].names
        tracked_rows["observable"] += [s.name] * len(names)
        tracked_rows["data_set"] += [s.data] * len(names)
        tracked_rows["sample_idx"] += list(range(len(names)))
        tracked_rows["sample_name"] += list(names)
    chain, draw = np.indices(bl.shape)
    return StageOutput(
        tables={
            "r_tracked": tracked_rows,
            "r_batch_losses": {"chain": chain.ravel(), "draw": draw.ravel(), "loss": bl.ravel()},
            "r_diagnostics": _diagnostics_rows(
                traces, bl, res.init_loss, Gradient(res.init_grad_norm, cfg.nbeta, cfg.gamma)
            ),
            **_schedule_tables(res.schedule, cfg),
        },
        artifacts={name: out_dir / name for name in ("traces.parquet", "summary.json", "batch_losses.npy")},
        measured={"sampling_wall_s": res.wall_s},
    )


DIAGNOSTICS_DOC = (
    "convergence screens per checkpoint (sbif_dsl/sampling/screens.py): series 'tracked' (an observable's mean loss; "
    "rhat_max/rhat_median: split-R̂ over its samples, per sequence for token traces) or 'minibatch' (the SGLD "
    "minibatch loss, observable NULL); chain NULL = over all chains (rhat: split-R̂, ess: Stan's bulk ESS of split "
    "chains, drift: Σz/√C), else one chain (ess: that chain's, lag1_autocorr, ess_ar1, drift: slope / its "
    "autocorrelation-corrected SE); change: fitted rise over the draws; rise_sd (minibatch): (mean loss − L(w*)) / "
    "its sd, negative = below the checkpoint (not a local minimum); grad_norm, grad_sd (minibatch, all chains): "
    "‖∇L(w*)‖ over the training set and nβ‖∇L(w*)‖/√γ, how many posterior SDs below L(w*) that gradient lets the "
    "chains sit; verdict (ok/warn/fail) and reason: the checkpoint's, under the default thresholds (the spec's "
    "diagnostics: block changes what sbif run prints); geometry (not a local minimum: gradient, descent) and "
    "convergence (R̂, ESS per chain, drift): the worst level of each"
)

KIND = Kind(
    name="sample",
    # 6: traces stored at the study's dtype (a float64 study's were cast to float32, losing its last digits); the
    # schedule run (r_schedule, r_schedule_rounds; eps/draws auto); geometry screens (‖∇L(w*)‖, grad_sd) beside the
    # convergence screens, geometry/convergence verdicts, ESS judged per chain; 5: convergence screens (split-R̂,
    # ESS, drift, verdict) in r_diagnostics, which also holds what r_trace_mixing held (trace_mixing is a view over
    # it); 4: keyed sampler fields declared by the spec (rmsprop settings only for rmsprop_sgld), trace mixing
    # computed here; 3: device in the key is the spec's, batch losses are an artifact, no wall time in summary.json
    version=6,
    run="sbif_dsl.stages.sample:run",
    model=True,
    tables=(
        Table("r_tracked", "observable VARCHAR, data_set VARCHAR, sample_idx INTEGER, sample_name VARCHAR"),
        Table("r_batch_losses", "chain INTEGER, draw INTEGER, loss DOUBLE"),
        Table(
            "r_schedule",
            "eps_policy VARCHAR, draws_policy VARCHAR, eps DOUBLE, pull DOUBLE, acceptance DOUBLE, adapt_steps "
            "INTEGER, burn_in INTEGER, burn_in_stop VARCHAR, tau_steps DOUBLE, steps_between_draws INTEGER, draws "
            "INTEGER, stop VARCHAR",
        ),
        Table("r_schedule_rounds", "round INTEGER, draws INTEGER, converged BOOLEAN, findings VARCHAR"),
        Table(
            "r_diagnostics",
            "series VARCHAR, observable VARCHAR, chain INTEGER, chains INTEGER, draws INTEGER, rhat DOUBLE, "
            "rhat_max DOUBLE, rhat_median DOUBLE, ess DOUBLE, ess_tail DOUBLE, lag1_autocorr DOUBLE, ess_ar1 DOUBLE, "
            "drift DOUBLE, change DOUBLE, rise_sd DOUBLE, grad_norm DOUBLE, grad_sd DOUBLE, verdict VARCHAR, "
            "reason VARCHAR, geometry VARCHAR, convergence VARCHAR",
        ),
    ),
    views=(
        View(
            "sampler_schedule",
            """
        SELECT ss.study, sr.step, s.eps_policy, s.draws_policy, s.eps, s.pull, s.acceptance, s.adapt_steps,
               s.burn_in, s.burn_in_stop, s.tau_steps, s.steps_between_draws, s.draws, s.stop
        FROM {scope} JOIN r_schedule s ON s.key = sr.key""",
            "what the sampler ran per checkpoint and why: eps (chosen by dual averaging to auto.target_acceptance "
            "where eps: auto; acceptance: mean MALA acceptance over the second half of the warm-up), pull = εγ/2, "
            "burn_in (steps; burn_in_stop: stationary or budget), tau_steps (autocorrelation time of the minibatch "
            "loss, steps), steps_between_draws, draws, stop (converged, budget: max_draws / max_seconds, or fixed "
            "schedule)",
        ),
        View(
            "sampler_rounds",
            """
        SELECT ss.study, sr.step, r.round, r.draws, r.converged, r.findings
        FROM {scope} JOIN r_schedule_rounds r ON r.key = sr.key""",
            "draws: auto, per round of draws: the draws so far, whether the convergence screens passed, and what "
            "was still open",
        ),
        View(
            "batch_losses",
            """
        SELECT ss.study, sr.step, b.chain, b.draw, b.loss
        FROM {scope} JOIN r_batch_losses b ON b.key = sr.key""",
            "SGLD minibatch loss per checkpoint, chain and draw (the LLC's input)",
        ),
        View(
            "diagnostics",
            """
        SELECT ss.study, sr.step, d.series, d.observable, d.chain, d.chains, d.draws, d.rhat, d.rhat_max,
               d.rhat_median, d.ess, d.ess_tail, d.lag1_autocorr, d.ess_ar1, d.drift, d.change, d.rise_sd, d.grad_norm,
               d.grad_sd, d.verdict, d.reason, d.geometry, d.convergence
        FROM {scope} JOIN r_diagnostics d ON d.key = sr.key""",
            DIAGNOSTICS_DOC,
        ),
        View(
            "trace_mixing",
            """
        SELECT ss.study, sr.step, m.observable, m.chain, m.draws, m.lag1_autocorr, m.ess_ar1
        FROM {scope} JOIN r_diagnostics m ON m.key = sr.key
        WHERE m.series = 'tracked' AND m.chain IS NOT NULL""",
            "per chain: lag-1 autocorrelation of an observable's mean loss over draws, AR(1) effective draws "
            "(the per-chain tracked rows of diagnostics)",
        ),
    ),
)

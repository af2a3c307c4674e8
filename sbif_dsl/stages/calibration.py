"""Calibration stage: one grid point of `sbif calibrate` (sbif_dsl/calibrate.py): SGLD chains at one checkpoint
with a MALA acceptance estimate and stationarity statistics.

Keyed like a sample stage (the resolved sampler settings, seed, dtype, device, the checkpoint and dataset keys;
same seed too, so the spec's own setting reproduces its sample stage's chains). The stages belong to no spec:
they are registered under the pseudo-study '<study>:calibrate', which `cache gc` keeps and the views read.
"""

from __future__ import annotations

from pathlib import Path

from .base import Inputs, Stage, StageMeta, StageOutput
from .kind import Kind, Table, View
from .sample import sampler_config, sampling_params

CALIBRATION_SUFFIX = ":calibrate"


def fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def build_stage(rt, checkpoint: Stage, dataset_key: str, sampler) -> Stage:
    """One grid point: the spec sampler block `sampler` at a checkpoint."""
    cfg = sampler_config(rt, sampler)
    return Stage(
        kind="calibration",
        version=KIND.version,
        params=sampling_params(rt, checkpoint, cfg),  # the sample stage's seed too: same chains for the same setting
        inputs=(checkpoint.key, dataset_key),
        meta=StageMeta(
            step=checkpoint.step,
            parent=checkpoint.key,
            label=f"calibrate at step {checkpoint.step}: {cfg['method']} eps={fmt(cfg['eps'])} "
            f"gamma={fmt(cfg['gamma'])} nbeta={fmt(cfg['nbeta'])}",
        ),
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np

    from ..sampling import SGLDConfig
    from ..sampling.diagnostics import run_calibration_chains, summarize

    cfg = SGLDConfig(**stage.params["sampler"])
    module = rt.module_at(inputs.file(stage.inputs[0], "state.pt"))
    rt.check_loss_contract(module)
    params0 = {k: v.detach() for k, v in module.named_parameters()}
    train = (rt.on_device(rt.dataset.train.inputs), rt.on_device(rt.dataset.train.targets))
    res = run_calibration_chains(rt.loss_fn(module), params0, train, cfg, seed=stage.params["seed"], progress=progress)
    s = summarize(res, cfg.nbeta)
    ch = s["chains"]
    C, D = res.batch_losses.shape
    chain, draw = np.indices((C, D))
    return StageOutput(
        tables={
            "r_calibration": {
                "method": [cfg.method],
                "eps": [cfg.eps],
                "gamma": [cfg.gamma],
                "nbeta": [cfg.nbeta],
                "chains": [cfg.chains],
                "draws": [cfg.draws],
                "burn_in": [cfg.burn_in],
                "steps_between_draws": [cfg.steps_between_draws],
                "batch_size": [cfg.batch_size],
                "init_loss": [res.init_loss],
                "llc_mean": [s["llc_mean"]],
                "llc_std": [s["llc_std"]],
                "trend": [s["trend"]],
                "half_shift": [s["half_shift"]],
                "stationary": [s["stationary"]],
                "acceptance": [s["acceptance"]],
                "divergences": [s["divergences"]],
            },
            "r_calibration_chains": {
                "chain": np.arange(C),
                **{k: ch[k].numpy().astype(float) for k in ("llc", "mean_loss", "trend", "half_shift", "acceptance")},
                "diverged": ch["diverged"].numpy(),
                "diverged_at": ch["diverged_at"].numpy().astype(np.int32),
            },
            "r_calibration_draws": {
                "chain": chain.ravel(),
                "draw": draw.ravel(),
                "loss": res.batch_losses.numpy().ravel(),
                "acceptance": res.acceptance.numpy().ravel(),
            },
        }
    )


_CAL = "{scope} JOIN r_calibration c ON c.key = sr.key"
_STUDY = f"left(ss.study, length(ss.study) - {len(CALIBRATION_SUFFIX)}) AS study"
_WHERE = f"WHERE ss.study LIKE '%{CALIBRATION_SUFFIX}'"

KIND = Kind(
    name="calibration",
    version=3,  # 3: keyed like sample stages v4; 2: keyed like sample stages v3 (the spec's device)
    run="sbif_dsl.stages.calibration:run",
    model=True,
    tables=(
        Table(
            "r_calibration",
            "method VARCHAR, eps DOUBLE, gamma DOUBLE, nbeta DOUBLE, chains INTEGER, draws INTEGER, burn_in INTEGER, "
            "steps_between_draws INTEGER, batch_size INTEGER, init_loss DOUBLE, llc_mean DOUBLE, llc_std DOUBLE, "
            "trend DOUBLE, half_shift DOUBLE, stationary BOOLEAN, acceptance DOUBLE, divergences INTEGER",
        ),
        Table(
            "r_calibration_chains",
            "chain INTEGER, llc DOUBLE, mean_loss DOUBLE, trend DOUBLE, half_shift DOUBLE, acceptance DOUBLE, "
            "diverged BOOLEAN, diverged_at INTEGER",
        ),
        Table("r_calibration_draws", "chain INTEGER, draw INTEGER, loss DOUBLE, acceptance DOUBLE"),
    ),
    views=(
        View(
            "calibration",
            f"""
        SELECT {_STUDY}, sr.step, c.method, c.eps, c.gamma, c.nbeta, c.chains, c.draws, c.burn_in,
               c.steps_between_draws, c.batch_size, c.llc_mean, c.llc_std, c.trend, c.half_shift, c.stationary,
               c.acceptance, c.divergences, c.init_loss, sr.wall_s, sr.key
        FROM {_CAL} {_WHERE}""",
            "`sbif calibrate` grid points: LLC mean/std over chains, stationarity, MALA acceptance, divergences",
        ),
        View(
            "calibration_chains",
            f"""
        SELECT {_STUDY}, sr.step, c.method, c.eps, c.gamma, c.nbeta, h.chain, h.llc, h.mean_loss, h.trend,
               h.half_shift, h.acceptance, h.diverged, h.diverged_at, sr.key
        FROM {_CAL} JOIN r_calibration_chains h ON h.key = sr.key {_WHERE}""",
            "`sbif calibrate` per chain: LLC, trend, acceptance, divergence",
        ),
        View(
            "calibration_draws",
            f"""
        SELECT {_STUDY}, sr.step, c.method, c.eps, c.gamma, c.nbeta, d.chain, d.draw, d.loss, d.acceptance,
               sr.key
        FROM {_CAL} JOIN r_calibration_draws d ON d.key = sr.key {_WHERE}""",
            "`sbif calibrate` per draw: minibatch loss and MALA acceptance probability",
        ),
    ),
)

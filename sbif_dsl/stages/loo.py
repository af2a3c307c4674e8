"""Leave-one-out retraining: the ground truth the BIF is validated against (SCIENCE.md §5).

    Δ_ij(t) = l_j^D(t) − l_j^{D∖i}(t)          negative = removing i raises j's loss = i helps j (as the BIF)

One stage per left-out sample i. It retrains from the full run's initial weights (the same init seed) with the
same optimizer settings and step schedule on D∖i, through every checkpoint step once, and records the target
losses at each of them next to the full run's (read from the checkpoint stages). Training goes through
`train.train_segment`, the loop the checkpoint stages use, segment by segment between checkpoint steps exactly
as a fresh `sbif run` trains them, so "without i" differs from the full run in the data only; minibatches are
drawn by the same generator from the n−1 remaining samples.

What "the loss without i" is (`normalization`):
- `n` (default): (1/n)·Σ_{k≠i} l_k. Sample i's term is removed and every other sample keeps its weight 1/n.
  This is the perturbation the BIF linearizes: −Cov_p(l_i, φ) is the derivative of E_p[φ] with respect to the
  weight of l_i in the loss with every other weight held fixed.
- `n_minus_1`: the mean over the n−1 remaining samples. It also multiplies every other sample's weight by
  n/(n−1) (for SGD: a learning rate n/(n−1) larger), which moves every transition earlier and adds a common,
  same-signed offset to all Δ_ij near transitions. On the 8-item toy (a 14% larger rate) this offset dominates
  the early Δ (all pairs look harmful), and Pearson(BIF, LOO) drops from 0.73 to 0.40.
(With Adam the two barely differ: Adam is nearly invariant to the scale of the loss.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from . import train
from .base import Inputs, Stage, StageMeta, StageOutput
from .kind import AnalysisKind, Table, View


class LooAnalysis(Base):
    """Leave-one-out retraining, the ground truth for the BIF (SCIENCE.md §5): Δ_ij(t) = l_j^D(t) − l_j^{D∖i}(t).

    Needs a study trained in-spec: each left-out sample i is retrained from the same initial weights with the
    same optimizer and schedule on D∖i, once through all checkpoint steps. Negative Δ = i helps j (as the BIF).
    """

    KEYED = ("normalization",)
    UNKEYED = ("name", "kind", "left_out", "target")  # left_out: which stages exist; target: keyed as its data set

    kind: Literal["loo"] = Field(description="Leave-one-out retraining (ground truth for the BIF).")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL (default 'loo')."
    )
    left_out: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Training samples to leave out, by name (default: every one).",
    )
    target: str = Field(
        default="train", max_length=128, description="Observable whose samples' losses Δ is measured on."
    )
    normalization: Literal["n", "n_minus_1"] = Field(
        default="n",
        description="Training loss without i. n: (1/n)·Σ_{k≠i} l_k, i's term removed and every other sample keeping "
        "its weight 1/n: the perturbation the BIF linearizes. n_minus_1: the mean over the n−1 remaining samples, "
        "which also raises every other weight by n/(n−1) (a larger effective learning rate: transitions come earlier).",
    )


def _left_out(rt, analysis, index: int) -> list[int]:
    from ..spec.loader import spec_problem

    names = rt.dataset.train.names
    if analysis.left_out is None:
        return list(range(len(names)))
    pos = {n: k for k, n in enumerate(names)}
    for j, m in enumerate(analysis.left_out):
        if m not in pos:  # python data: names are known only now
            raise spec_problem(
                rt.spec, ("analyses", index, "left_out", j), f"no training sample {m!r} (e.g. {names[0]!r})"
            )
    return [pos[m] for m in analysis.left_out]


def build(rt, analysis, index: int, plan) -> list[Stage]:
    """One stage per left-out sample; its key holds the training lineage and the whole checkpoint schedule."""
    name = analysis.name or analysis.kind
    target_set = next(o.data for o in rt.study.observables if o.name == analysis.target)
    steps = [c.step for c in plan.checkpoints]
    lineage = train.lineage_fields(rt)
    names = rt.dataset.train.names
    return [
        Stage(
            kind="loo",
            version=KIND.version,
            params={
                **lineage,
                **analysis.key_params(),
                "steps": steps,
                "left_out_idx": i,
                "left_out": names[i],
                "target_set": target_set,
            },
            inputs=(plan.dataset_key, *(c.key for c in plan.checkpoints)),
            meta=StageMeta(analysis=name, label=f"{name}: retrain without {names[i]}"),
        )
        for i in _left_out(rt, analysis, index)
    ]


def problems(study, index: int, a) -> list:
    """loo retrains: it needs in-spec training; left_out names training samples, once each."""
    out = []
    if study.training is None:
        out.append(
            (("analyses", index, "kind"), "loo retrains the model: it needs 'training' (not loaded checkpoints)")
        )
    if a.left_out is not None and len(set(a.left_out)) != len(a.left_out):
        out.append((("analyses", index, "left_out"), "left_out lists a sample twice"))
    if study.data.kind == "hierarchy" and a.left_out is not None:
        items = study.data.names()
        for j, m in enumerate(a.left_out):
            if m not in items:
                out.append((("analyses", index, "left_out", j), f"no training sample {m!r}; items: {', '.join(items)}"))
    return out


def _losses(rt, module, s):
    """Per-sample losses of a sample set (per-token losses averaged per sample), float64 on the host: (n,)."""
    import torch

    out = rt.losses(module, s)
    return (out.mean(dim=-1) if out.dim() == 2 else out).to(torch.float64)


def full_run_losses(rt, states: dict[int, Path], target_set: str) -> dict:
    """l_j^D(t): target losses at the full run's checkpoint weights ({step: state.pt})."""
    s = rt.dataset.sets()[target_set]
    return {step: _losses(rt, rt.module_at(path), s) for step, path in states.items()}


def retrain_losses(rt, fields: dict, keep, steps: list[int], target_set: str, weight: float = 1.0):
    """Train the lineage `fields` (as a checkpoint stage's params) on the training samples `keep` (indices) from its
    initial weights through `steps`, on the mean loss over `keep` times `weight`, returning {step: per-sample
    target losses}. With keep = every sample and weight 1 this is the full run, bitwise."""
    data = rt.dataset.train
    module, opt, gen = train.start_training(rt, fields)
    x, y = rt.on_device(data.inputs[keep]), rt.on_device(data.targets[keep])
    s = rt.dataset.sets()[target_set]
    loss = rt.dataset.loss if weight == 1.0 else (lambda out, tgt: weight * rt.dataset.loss(out, tgt))
    settings = train.training_settings(fields)
    out, prev = {}, 0
    for step in steps:
        train.train_segment(module, opt, gen, x, y, loss, settings, prev, step)
        prev = step
        out[step] = _losses(rt, module, s)
    return out


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np
    import torch

    p = stage.params
    i, target_set, steps = p["left_out_idx"], p["target_set"], p["steps"]
    n = len(rt.dataset.train)
    keep = torch.tensor([k for k in range(n) if k != i])
    # normalization n: (1/n)·Σ_{k≠i} l_k = ((n−1)/n) · mean over the n−1 kept samples
    weight = (n - 1) / n if p["normalization"] == "n" else 1.0
    loo = retrain_losses(rt, p, keep, steps, target_set, weight)
    states = {step: inputs.file(key, "state.pt") for step, key in zip(steps, stage.inputs[1:], strict=True)}
    full = full_run_losses(rt, states, target_set)
    names = rt.dataset.sets()[target_set].names
    left_name = rt.dataset.train.names[i]
    rows: dict[str, list] = {k: [] for k in ("step", "target_idx", "target", "loss_full", "loss_loo", "delta")}
    for step in steps:
        lf, ll = full[step].tolist(), loo[step].tolist()
        rows["step"] += [step] * len(names)
        rows["target_idx"] += list(range(len(names)))
        rows["target"] += list(names)
        rows["loss_full"] += lf
        rows["loss_loo"] += ll
        rows["delta"] += [a - b for a, b in zip(lf, ll, strict=True)]  # Δ_ij = l_j^D − l_j^{D∖i}
    m = len(rows["step"])
    np.save(out_dir / "delta.npy", np.array(rows["delta"], dtype=np.float64).reshape(len(steps), len(names)))
    return StageOutput(
        artifacts={"delta.npy": out_dir / "delta.npy"},  # (steps, targets): what `agreement` reads
        tables={
            "r_loo": {
                **rows,
                "left_out_idx": [i] * m,
                "left_out": [left_name] * m,
                "target_set": [target_set] * m,
            }
        },
    )


KIND = AnalysisKind(
    name="loo",
    # 3: keyed on its declared fields (no name; the target by its data set), Δ stored as delta.npy
    # 2: full-run losses from the checkpoint inputs; device in the key is the spec's
    version=3,
    run="sbif_dsl.stages.loo:run",
    spec=LooAnalysis,
    attach="study",
    model=True,
    references=("target",),
    build=build,
    problems=problems,
    tables=(
        Table(
            "r_loo",
            "step BIGINT, left_out_idx INTEGER, left_out VARCHAR, target_set VARCHAR, target_idx INTEGER, "
            "target VARCHAR, loss_full DOUBLE, loss_loo DOUBLE, delta DOUBLE",
        ),
    ),
    views=(
        View(
            "loo",
            """
        SELECT ss.study, l.step, ss.analysis, l.left_out_idx, l.left_out, l.target_set, l.target_idx, l.target,
               l.loss_full, l.loss_loo, l.delta
        FROM {scope} JOIN r_loo l ON l.key = sr.key""",
            "leave-one-out ground truth: delta = l_target(full run) - l_target(run without left_out) per checkpoint "
            "(negative = helpful, as the BIF)",
        ),
    ),
)

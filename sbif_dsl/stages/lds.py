"""`lds`: the linear datamodeling score of a BIF analysis against retraining on random subsets (SCIENCE.md §9).

Two stage kinds. `lds_subset` (one per subset m, a helper kind): retrain from the full run's initial weights with
the same optimizer and schedule on a random subset S_m of the training set, through every checkpoint step
(`loo.retrain_losses`, the loop leave-one-out and the checkpoint stages use), and record the targets' losses
l_j(S_m) at each checkpoint. S_m is a function of (study seed, the analysis' `seed`, m, n, fraction) only: its
key holds no subset count, so raising `subsets` from 50 to 100 trains only subsets 50..99 and a killed run keeps
every committed subset. `lds` (one per analysis): predicts each subset's loss change from the BIF at every
checkpoint (`influence/lds.py`: g_j(S) = (nβ/k)·Σ_{i∈S} BIF_ij − (nβ/n)·Σ_i BIF_ij) and scores it by Spearman
(the LDS) and Pearson over subsets, mean over targets. Its interval holds both sources of error: the subsets drawn
(a bootstrap over subsets) and the BIF's own Monte Carlo noise (the delete-one-chain jackknife of the LDS: each
checkpoint's BIF recomputed from its traces without chain g, the same estimator as the `bif` stage), added in
quadrature (`influence.lds`). Chain noise also lowers the LDS itself (noisier predictions correlate less):
`spearman_se_chains` says how large it is against the bootstrap's share.

What "training on S" is (`normalization`):
- `subset` (default): the mean loss over S, (1/k)·Σ_{i∈S} l_i, k = |S|: the subset as a data set of its own, as
  dattri, TRAK and Bergson retrain. The learning rate per sample doubles at fraction 0.5.
- `n`: (1/n)·Σ_{i∈S} l_i, every kept sample keeping its full-data weight 1/n (as loo's default); with SGD the
  whole loss, and so every step, shrinks by k/n.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..hashing import canonical_json, derive_seed, sha256_hex
from ..keyed import NAME_PATTERN, Base
from . import train
from .base import Inputs, Stage, StageMeta, StageOutput
from .bif import read_matrices
from .kind import AnalysisKind, Kind, Table, View
from .loo import retrain_losses

STAT_COLUMNS = ("spearman", "pearson")
PARTS = (("value", ""), ("se", "_se"), ("lo", "_lo"), ("hi", "_hi"), ("se_chains", "_se_chains"))  # -> columns


class LdsAnalysis(Base):
    """Linear datamodeling score of a BIF analysis (SCIENCE.md §9): retrain on `subsets` random subsets of a
    `fraction` of the training set and correlate the BIF-predicted subset losses of the `targets` with the
    measured ones, per checkpoint and overall (Spearman = the LDS, and Pearson; bootstrap interval over subsets).

    Needs a study trained in-spec and a `bif` analysis whose source is the training set and whose target has the
    same data as `targets`. Each subset is its own cached stage: more subsets later train only the new ones."""

    KEYED = ("fraction", "seed", "normalization", "value", "bootstrap")
    UNKEYED = ("name", "kind", "subsets", "targets", "bif")  # subsets: which stages exist; the others: its inputs

    kind: Literal["lds"] = Field(description="Linear datamodeling score against retraining on random subsets.")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL (default 'lds')."
    )
    subsets: int = Field(default=100, ge=2, le=100_000, strict=True, description="Random subsets to retrain on.")
    fraction: float = Field(
        default=0.5, gt=0, lt=1, strict=True, description="Share of the training set in each subset (k = round(f·n))."
    )
    targets: str | None = Field(
        default=None,
        max_length=128,
        description="Observable whose samples' losses are predicted and measured (default: the bif's target).",
    )
    bif: str = Field(default="bif", max_length=128, description="Name of the bif analysis that predicts.")
    value: Literal["bif_cov", "bif_corr"] = Field(
        default="bif_cov",
        description="Attribution summed over a subset: -Cov (bif_cov, the first-order prediction) or -Corr.",
    )
    normalization: Literal["subset", "n"] = Field(
        default="subset",
        description="Training loss on a subset S: subset = the mean over S (the usual datamodel retrain); "
        "n = (1/n)·Σ_{i∈S} l_i, each kept sample keeping its full-data weight.",
    )
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1, strict=True, description="Which random subsets (with the study seed)."
    )
    bootstrap: int = Field(
        default=1000, ge=0, le=100_000, strict=True, description="Bootstrap resamples of the subsets (0: no interval)."
    )


def subset_members(n: int, fraction: float, study_seed: int, seed: int, m: int) -> list[int]:
    """Sorted indices of subset m: the k = round(fraction·n) samples with the smallest sha256 of (seeds, m, i).
    A function of its arguments only (no RNG whose stream could change between library versions)."""
    k = min(n, max(1, round(fraction * n)))
    salt = derive_seed(study_seed, "lds-subset", seed, m)
    return sorted(sorted(range(n), key=lambda i: sha256_hex(canonical_json([salt, i])))[:k])


def _bif_stages(analysis, plan) -> list[Stage]:
    return sorted((s for s in plan.stages if s.kind == "bif" and s.analysis == analysis.bif), key=lambda s: s.step)


def build(rt, analysis, index: int, plan) -> list[Stage]:
    """One lds_subset stage per subset (keyed by its index, never by the count), then the statistics stage."""
    name = analysis.name or analysis.kind
    bifs = _bif_stages(analysis, plan)
    bif_spec = next(a for a in rt.study.analyses if a.kind == "bif" and (a.name or a.kind) == analysis.bif)
    targets = analysis.targets or bif_spec.target or bif_spec.source
    target_set = next(o.data for o in rt.study.observables if o.name == targets)
    steps = [c.step for c in plan.checkpoints]
    n = len(rt.dataset.train)
    retrain = {
        **train.lineage_fields(rt),
        "steps": steps,
        "fraction": analysis.fraction,
        "subset_seed": analysis.seed,
        "normalization": analysis.normalization,
        "target_set": target_set,
    }
    subsets = [
        Stage(
            kind="lds_subset",
            version=SUBSET.version,
            params={**retrain, "subset": m},
            inputs=(plan.dataset_key,),
            meta=StageMeta(analysis=name, label=f"{name}: retrain on subset {m}"),
        )
        for m in range(analysis.subsets)
    ]
    samples = {s.key: s for s in plan.stages if s.kind == "sample"}
    stats = Stage(
        kind="lds",
        version=KIND.version,
        params={
            **analysis.key_params(),
            "n_train": n,
            "bif_steps": [s.step for s in bifs],
            "nbeta": [samples[s.meta.parent].params["sampler"]["nbeta"] for s in bifs],
            "bif_source": bif_spec.source,
            "bif_target": bif_spec.target or bif_spec.source,
            "steps": steps,
            "subsets": list(range(analysis.subsets)),
            "target_names": list(rt.dataset.sets()[target_set].names),
        },
        inputs=(*(s.key for s in bifs), *(s.key for s in subsets), *(s.inputs[0] for s in bifs)),  # + their samples
        meta=StageMeta(analysis=name, label=f"{name}: {analysis.bif} vs {analysis.subsets} retrained subsets"),
    )
    return [*subsets, stats]


def problems(study, index: int, a) -> list:
    """lds retrains (needs training) and reads a bif from the training set to the targets' data."""
    out: list = []
    where = ("analyses", index)
    if study.training is None:
        out.append(((*where, "kind"), "lds retrains the model: it needs 'training' (not loaded checkpoints)"))
    bif = next((b for b in study.analyses if b.kind == "bif" and (b.name or b.kind) == a.bif), None)
    if bif is None:
        declared = [b.name or b.kind for b in study.analyses if b.kind == "bif"]
        out.append(
            ((*where, "bif"), f"no bif analysis named {a.bif!r}; bif analyses: {', '.join(declared) or '(none)'}")
        )
        return out
    data_of = {o.name: o.data for o in study.observables}
    if data_of.get(bif.source) != "train":
        out.append(
            (
                (*where, "bif"),
                f"bif analysis {a.bif!r} has source {bif.source!r}, not the training set; subsets are of training "
                "samples, so name a bif whose source observable has data: train",
            )
        )
    bif_target = bif.target or bif.source
    if a.targets is not None and a.targets in data_of and data_of[a.targets] != data_of.get(bif_target):
        out.append(
            (
                (*where, "targets"),
                f"targets {a.targets!r} (data {data_of[a.targets]!r}) differ from bif {a.bif!r}'s target "
                f"{bif_target!r} (data {data_of.get(bif_target)!r}); hint: add a bif with target: {a.targets}",
            )
        )
    return out


def run_subset(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np
    import torch

    p = stage.params
    n, m, steps = len(rt.dataset.train), p["subset"], p["steps"]
    members = subset_members(n, p["fraction"], p["seed"], p["subset_seed"], m)
    weight = len(members) / n if p["normalization"] == "n" else 1.0  # n: (1/n)·Σ_{i∈S} l_i = (k/n)·mean over S
    losses = retrain_losses(rt, p, torch.tensor(members), steps, p["target_set"], weight)
    measured = np.stack([losses[s].numpy() for s in steps])  # (steps, targets)
    mask = np.zeros(n, dtype=bool)
    mask[members] = True
    np.save(out_dir / "losses.npy", measured)
    np.save(out_dir / "members.npy", mask)
    names = rt.dataset.sets()[p["target_set"]].names
    q = len(names)
    return StageOutput(
        artifacts={"losses.npy": out_dir / "losses.npy", "members.npy": out_dir / "members.npy"},
        tables={
            "r_lds_subsets": {
                "subset": [m] * (len(steps) * q),
                "step": [s for s in steps for _ in range(q)],
                "target_idx": list(range(q)) * len(steps),
                "target": list(names) * len(steps),
                "loss": measured.ravel().tolist(),
                "subset_size": [len(members)] * (len(steps) * q),
            }
        },
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np

    from ..influence.lds import lds, subset_predictions

    p = stage.params
    nb, n = len(p["bif_steps"]), p["n_train"]
    subset_keys = stage.inputs[nb : nb + len(p["subsets"])]
    sample_keys = stage.inputs[nb + len(p["subsets"]) :]
    masks = np.stack([np.load(inputs.file(k, "members.npy")) for k in subset_keys])  # (subsets, n)
    measured = np.stack([np.load(inputs.file(k, "losses.npy")) for k in subset_keys])  # (subsets, steps, q)
    at = {s: c for c, s in enumerate(p["steps"])}
    steps = [s for s in p["bif_steps"] if s in at]
    divisor = masks[0].sum() if p["normalization"] == "subset" else n
    pred = np.stack(
        [
            subset_predictions(read_matrices(inputs, key)[p["value"]][0], masks, nbeta, divisor)
            for step, key, nbeta in zip(p["bif_steps"], stage.inputs[:nb], p["nbeta"], strict=True)
            if step in at
        ]
    )  # (checkpoints, subsets, q)
    meas = np.stack([measured[:, at[s], :] for s in steps])  # (checkpoints, subsets, q)
    chain_preds = [
        subset_predictions_without_each_chain(inputs, key, p, masks, nbeta, divisor)
        for step, key, nbeta in zip(p["bif_steps"], sample_keys, p["nbeta"], strict=True)
        if step in at
    ]  # per checkpoint (chains, subsets, q), or None for a single chain
    seed = derive_seed(p["seed"], "lds-bootstrap")
    res = lds(pred, meas, p["bootstrap"], seed, chain_preds)
    names, q, m = p["target_names"], meas.shape[2], meas.shape[1]
    stats: dict[str, list] = {"scope": [], "step": [], "n_subsets": [], "n_targets": []}
    for scope, step, row in [("checkpoint", s, r) for s, r in zip(steps, res["checkpoint"])] + [
        ("overall", None, res["overall"])
    ]:
        stats["scope"].append(scope)
        stats["step"].append(step)
        stats["n_subsets"].append(m)
        stats["n_targets"].append(row["n_targets"])
        for col in STAT_COLUMNS:
            for part, suffix in PARTS:
                stats.setdefault(col + suffix, []).append(row[col][part])
    k = len(stats["scope"])
    sp, pe = res["per_target"]  # (checkpoints, q)
    nan_none = lambda a: [None if not np.isfinite(v) else float(v) for v in a.ravel()]  # noqa: E731
    return StageOutput(
        tables={
            "r_lds": {**stats, "value": [p["value"]] * k, "bif_key": [stage.inputs[0] if nb else None] * k},
            "r_lds_targets": {
                "step": [s for s in steps for _ in range(q)],
                "target_idx": list(range(q)) * len(steps),
                "target": list(names) * len(steps),
                "spearman": nan_none(sp),
                "pearson": nan_none(pe),
            },
            "r_lds_predictions": {
                "step": [s for s in steps for _ in range(m * q)],
                "subset": [j for _ in steps for j in p["subsets"] for _ in range(q)],
                "target_idx": list(range(q)) * (len(steps) * m),
                "target": list(names) * (len(steps) * m),
                "predicted": pred.ravel().tolist(),
                "measured": meas.ravel().tolist(),
            },
        }
    )


def subset_predictions_without_each_chain(inputs: Inputs, sample_key: str, p: dict, masks, nbeta: float, divisor):
    """(chains, subsets, q): the subset predictions of the BIF of all chains but chain g, for each g (the `bif`
    stage's estimator on its sample stage's traces); None where there is one chain (no jackknife)."""
    import numpy as np

    from ..influence import bif_matrices
    from ..influence.lds import subset_predictions
    from .traces import per_sample, read_traces

    traces = read_traces(inputs, sample_key)
    source, target = per_sample(traces[p["bif_source"]]), per_sample(traces[p["bif_target"]])
    chains = source.shape[0]
    if chains < 2:
        return None
    which = 0 if p["value"] == "bif_cov" else 1
    out = []
    for g in range(chains):
        keep = [c for c in range(chains) if c != g]
        tau = bif_matrices(source[keep], target[keep])[which].numpy()
        out.append(subset_predictions(tau, masks, nbeta, divisor))
    return np.stack(out)


SUBSET = Kind(
    name="lds_subset",
    version=1,
    run="sbif_dsl.stages.lds:run_subset",
    model=True,
    tables=(
        Table(
            "r_lds_subsets",
            "subset INTEGER, step BIGINT, target_idx INTEGER, target VARCHAR, loss DOUBLE, subset_size INTEGER",
        ),
    ),
)

_BIF_NAME = "LEFT JOIN study_scope bn ON bn.study = ss.study AND bn.key = l.bif_key"

KIND = AnalysisKind(
    name="lds",
    # 2: the interval includes the BIF's chain noise (delete-one-chain jackknife; the sample stages are inputs)
    version=2,
    run="sbif_dsl.stages.lds:run",
    spec=LdsAnalysis,
    attach="study",
    references=("targets",),
    build=build,
    problems=problems,
    helpers=(SUBSET,),
    tables=(
        Table(
            "r_lds",
            "scope VARCHAR, step BIGINT, n_subsets INTEGER, n_targets INTEGER, "
            + ", ".join(f"{c} DOUBLE, {c}_se DOUBLE, {c}_lo DOUBLE, {c}_hi DOUBLE" for c in STAT_COLUMNS)
            + ", "
            + ", ".join(f"{c}_se_chains DOUBLE" for c in STAT_COLUMNS)
            + ", value VARCHAR, bif_key VARCHAR",
        ),
        Table("r_lds_targets", "step BIGINT, target_idx INTEGER, target VARCHAR, spearman DOUBLE, pearson DOUBLE"),
        Table(
            "r_lds_predictions",
            "step BIGINT, subset INTEGER, target_idx INTEGER, target VARCHAR, predicted DOUBLE, measured DOUBLE",
        ),
    ),
    views=(
        View(
            "lds",
            f"""
        SELECT ss.study, ss.analysis, bn.analysis AS bif_analysis, l.value AS bif_value, l.scope, l.step,
               l.n_subsets, l.n_targets, l.spearman, l.spearman_se, l.spearman_lo, l.spearman_hi,
               l.pearson, l.pearson_se, l.pearson_lo, l.pearson_hi, l.spearman_se_chains, l.pearson_se_chains
        FROM {{scope}} JOIN r_lds l ON l.key = sr.key {_BIF_NAME}""",
            "linear datamodeling score: Spearman (the LDS) and Pearson over retrained subsets between BIF-predicted "
            "and measured target losses, mean over targets, per checkpoint (scope 'checkpoint') and the mean over "
            "checkpoints (scope 'overall', step NULL); _se/_lo/_hi: the bootstrap over subsets (95% percentile "
            "interval) widened by the BIF's chain noise, _se_chains (delete-one-chain jackknife; NULL with one chain)",
        ),
        View(
            "lds_subsets",
            """
        SELECT ss.study, ss.analysis, p.step, p.subset, p.target_idx, p.target, p.predicted, p.measured
        FROM {scope} JOIN r_lds_predictions p ON p.key = sr.key""",
            "per retrained subset, checkpoint and target: the BIF-predicted loss change "
            "(nβ/k)·Σ_{i∈S} BIF - (nβ/n)·Σ_i BIF and the measured loss after retraining on the subset",
        ),
        View(
            "lds_targets",
            """
        SELECT ss.study, ss.analysis, t.step, t.target_idx, t.target, t.spearman, t.pearson
        FROM {scope} JOIN r_lds_targets t ON t.key = sr.key""",
            "LDS per target and checkpoint (before the mean over targets); NULL where a side is constant",
        ),
    ),
)

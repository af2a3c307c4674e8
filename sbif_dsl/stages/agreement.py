"""`agreement`: how well a BIF analysis (or a cumulative BIF) agrees with a leave-one-out analysis.

The stage pairs every compared (left-out i, target j) value with Δ_ij at every checkpoint both have and computes
the statistics in Python (`influence/agreement.py`), so the `agreement` view is bitwise the same for identical runs.

Compared pairs: off-diagonal (source ≠ target) by default. The self-influence BIF(i, i) = −Var(l_i) is always
negative (−Corr = −1) and Δ_ii is almost always negative and among the largest |Δ| at its checkpoint, so the
diagonal agrees in sign by construction, and its magnitudes follow their own scale (a variance against a
self-effect), a second population mixed into a pooled correlation. Neither says whether the BIF gets the influence
of one sample on *another* right, which is what the stagewise story is about. On the toy demo, adding the diagonal
raises the weighted sign agreement from 0.82 to 0.97 and Spearman from 0.47 to 0.58, and drops Pearson from 0.73
to 0.42. `diagonal: true` adds them for those who want them.

Statistics (per checkpoint, scope 'checkpoint', and pooled over pairs × checkpoints, scope 'overall'):
Pearson r of (BIF value, Δ); Spearman ρ = Pearson of average ranks (ties share their mean rank); sign agreement =
fraction of pairs with sign(BIF) = sign(Δ) among pairs with Δ ≠ 0; and the same weighted by |Δ| (signs of tiny
effects are noise). Both BIF and Δ are negative when helpful, so agreement means positive correlations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageMeta, StageOutput
from .bif import read_matrices
from .kind import AnalysisKind, Table, View

COMPARABLE = ("bif", "cumulative_bif")  # kinds whose bif.npz the agreement reads


class AgreementAnalysis(Base):
    """How well a BIF analysis agrees with a LOO analysis: Pearson, Spearman and sign agreement, per checkpoint
    and over all checkpoints (the `agreement` view). Off-diagonal pairs (i ≠ j) only by default: the self-influence
    BIF(i, i) = −Var(l_i) < 0 and Δ_ii < 0 agree in sign by construction and sit on their own magnitude scale, so
    they would distort the statistics without testing any influence between different samples
    (stages/agreement.py)."""

    KEYED = ("value", "diagonal")
    UNKEYED = ("name", "kind", "bif", "loo")  # what it compares: its inputs

    kind: Literal["agreement"] = Field(description="BIF vs leave-one-out agreement.")
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL (default 'agreement')."
    )
    bif: str = Field(
        default="bif", max_length=128, description="Name of the bif (or cumulative_bif) analysis to compare."
    )
    loo: str = Field(default="loo", max_length=128, description="Name of the loo analysis to compare.")
    value: Literal["bif_cov", "bif_corr"] = Field(
        default="bif_cov",
        description="BIF column compared with Δ: -Cov (bif_cov, keeps each checkpoint's magnitude, as Δ does) or "
        "-Corr (bif_corr).",
    )
    diagonal: bool = Field(default=False, strict=True, description="Also compare self-influence pairs (i = j).")


def build(rt, analysis, index: int, plan) -> list[Stage]:
    """One stage over every stage of the named bif and loo analyses (complete once they are)."""
    name = analysis.name or analysis.kind
    bifs = sorted((s for s in plan.stages if s.kind in COMPARABLE and s.analysis == analysis.bif), key=lambda s: s.step)
    loos = sorted((s for s in plan.stages if s.kind == "loo" and s.analysis == analysis.loo), key=lambda s: s.key)
    target_set = loos[0].params["target_set"] if loos else "train"
    return [
        Stage(
            kind="agreement",
            version=KIND.version,
            params={
                **analysis.key_params(),
                "bif_steps": [s.step for s in bifs],
                "left_out_idx": [s.params["left_out_idx"] for s in loos],
                "loo_steps": loos[0].params["steps"] if loos else [],
                "source_names": list(rt.dataset.train.names),
                "target_names": list(rt.dataset.sets()[target_set].names),
            },
            inputs=(*(s.key for s in bifs), *(s.key for s in loos)),
            meta=StageMeta(analysis=name, label=f"{name}: {analysis.bif} vs {analysis.loo}"),
        )
    ]


def problems(study, index: int, a) -> list:
    """agreement must name a bif-like and a loo analysis that measure the same pairs."""
    out: list = []
    by_name = {(b.name or b.kind): b for b in study.analyses}
    data_of = {o.name: o.data for o in study.observables}
    for field, kinds in (("bif", COMPARABLE), ("loo", ("loo",))):
        ref = by_name.get(getattr(a, field))
        if ref is None or ref.kind not in kinds:
            declared = [n for n, b in by_name.items() if b.kind in kinds]
            out.append(
                (
                    ("analyses", index, field),
                    f"no {kinds[0]} analysis named {getattr(a, field)!r}; "
                    f"{kinds[0]} analyses: {', '.join(declared) or '(none)'}",
                )
            )
    bif, loo = by_name.get(a.bif), by_name.get(a.loo)
    if bif is not None and bif.kind == "cumulative_bif":
        bif = by_name.get(bif.bif)
    if out or bif is None or loo is None or bif.kind != "bif":
        return out
    if data_of.get(bif.source) != "train":
        out.append(
            (
                ("analyses", index, "bif"),
                f"bif analysis {a.bif!r} has source {bif.source!r}, not the training set; "
                "leave-one-out removes training samples, so compare a bif whose source observable has data: train",
            )
        )
    bif_target = bif.target or bif.source
    bif_data, loo_data = data_of.get(bif_target), data_of.get(loo.target)
    if bif_data != loo_data:
        out.append(
            (
                ("analyses", index, "loo"),
                f"targets differ: bif {a.bif!r} targets {bif_target!r} (data {bif_data!r}), "
                f"loo {a.loo!r} targets {loo.target!r} (data {loo_data!r})",
            )
        )
    return out


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np

    from ..influence import agreement

    p = stage.params
    nb = len(p["bif_steps"])
    bif = {step: read_matrices(inputs, key)[p["value"]][0] for step, key in zip(p["bif_steps"], stage.inputs[:nb])}
    deltas = {i: np.load(inputs.file(key, "delta.npy")) for i, key in zip(p["left_out_idx"], stage.inputs[nb:])}
    at = {step: k for k, step in enumerate(p["loo_steps"])}
    src, tgt = p["source_names"], p["target_names"]
    pairs: dict[str, list] = {k: [] for k in ("step", "source_idx", "source", "target_idx", "target", "bif", "loo")}
    for step in (s for s in p["bif_steps"] if s in at):
        for i in sorted(deltas):
            for j in range(len(tgt)):
                if p["diagonal"] or src[i] != tgt[j]:
                    for col, v in zip(pairs, (step, i, src[i], j, tgt[j], bif[step][i, j], deltas[i][at[step], j])):
                        pairs[col].append(v)
    steps, b, d = (np.asarray(pairs[c]) for c in ("step", "bif", "loo"))
    stats: dict[str, list] = {"scope": [], "step": []}
    for scope, step, mask in [("checkpoint", s, steps == s) for s in dict.fromkeys(pairs["step"])] + [
        ("overall", None, np.ones(len(b), dtype=bool))
    ]:
        stats["scope"].append(scope)
        stats["step"].append(step)
        for k, v in agreement(b[mask], d[mask]).items():
            stats.setdefault(k, []).append(v)
    n = len(stats["scope"])
    meta = {
        "bif_key": [stage.inputs[0] if nb else None] * n,
        "loo_key": [stage.inputs[nb] if len(stage.inputs) > nb else None] * n,
    }
    return StageOutput(
        tables={"r_agreement_pairs": pairs, "r_agreement_stats": {**stats, **meta, "value": [p["value"]] * n}}
    )


# The names of the compared analyses are the study's (not keyed): looked up through a compared stage's key.
_NAMES = """
        LEFT JOIN study_scope bn ON bn.study = ss.study AND bn.key = a.bif_key
        LEFT JOIN study_scope ln ON ln.study = ss.study AND ln.key = a.loo_key"""

KIND = AnalysisKind(
    name="agreement",
    version=2,  # 2: statistics computed in the stage (bitwise reproducible), keyed on its declared fields
    run="sbif_dsl.stages.agreement:run",
    spec=AgreementAnalysis,
    attach="study",
    build=build,
    problems=problems,
    tables=(
        Table(
            "r_agreement_pairs",
            "step BIGINT, source_idx INTEGER, source VARCHAR, target_idx INTEGER, target VARCHAR, bif DOUBLE, "
            "loo DOUBLE",
        ),
        Table(
            "r_agreement_stats",
            "scope VARCHAR, step BIGINT, n_pairs BIGINT, pearson DOUBLE, spearman DOUBLE, sign_agreement DOUBLE, "
            "sign_agreement_weighted DOUBLE, bif_key VARCHAR, loo_key VARCHAR, value VARCHAR",
        ),
    ),
    views=(
        View(
            "agreement_pairs",
            f"""
        SELECT ss.study, ss.analysis, bn.analysis AS bif_analysis, ln.analysis AS loo_analysis, a.value AS bif_value,
               p.step, p.source_idx, p.source, p.target_idx, p.target, p.bif, p.loo
        FROM {{scope}} JOIN r_agreement_pairs p ON p.key = sr.key
        JOIN r_agreement_stats a ON a.key = sr.key AND a.scope = 'overall' {_NAMES}""",
            "BIF value and LOO delta side by side for every compared pair and checkpoint",
        ),
        View(
            "agreement",
            f"""
        SELECT ss.study, ss.analysis, bn.analysis AS bif_analysis, ln.analysis AS loo_analysis, a.value AS bif_value,
               a.scope, a.step, a.n_pairs, a.pearson, a.spearman, a.sign_agreement, a.sign_agreement_weighted
        FROM {{scope}} JOIN r_agreement_stats a ON a.key = sr.key {_NAMES}""",
            "BIF vs LOO: Pearson, Spearman, sign agreement per checkpoint (scope 'checkpoint') and pooled over "
            "all checkpoints (scope 'overall', step NULL)",
        ),
    ),
)

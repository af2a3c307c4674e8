"""`class_bif`: token-level BIF aggregated to class × class, in memory linear in tokens (SCIENCE.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .kind import AnalysisKind, Table, View, estimate_columns
from .traces import estimate_rows, read_traces


class ClassBifAnalysis(Base):
    """Token-level BIF aggregated to class × class in memory linear in tokens (SCIENCE.md §1); with `target`, the
    sources' token classes against another observable φ: −Cov(l_a, φ_b) block means, per target token class when
    φ is per token on the same set, else against φ as a whole (one target class named after it)."""

    KEYED = ("observable",)
    KEYED_IF_SET = ("target",)

    kind: Literal["class_bif"] = Field(description="Class × class token influence.")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL.")
    observable: str = Field(default="query", max_length=128, description="Observable with per-token losses.")
    target: str | None = Field(
        default=None,
        max_length=128,
        description="Observable the source classes influence (any kind: e.g. a per-token target_prob of the same "
        "set, or an induction_score); default: the source observable's own losses.",
    )


SCALES = ("raw", "fisher_z")  # -Cov's interval raw, -Corr's (a block mean of correlations) on Fisher's z


def token_set_params(rt, analysis) -> dict:
    """The data set of the analysed observable, which must hold token sequences (shared by the LM analyses)."""
    from . import tokens

    return {"data_set": tokens.observable_token_set(rt, analysis.observable)}


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np
    import torch

    from ..influence import class_bif, class_bif_cross
    from ..influence.uncertainty import jackknife
    from .tokens import read_masks

    observable = stage.params["observable"]
    traces = read_traces(inputs, stage.inputs[0])
    trace = traces[observable]  # (chains, draws, n, T-1)
    names, masks = read_masks(inputs, stage.inputs[1], stage.params["data_set"])  # (classes, n, T-1)
    flat_masks = masks.reshape(len(names), -1)  # (classes, tokens)
    target = stage.params.get("target") or observable
    if target == observable:
        target_names, target_masks = names, flat_masks
        (neg_cov, cov_se, df), (neg_corr, corr_se, _) = jackknife(
            lambda t: class_bif(t.reshape(t.shape[0], t.shape[1], -1), flat_masks), trace, scales=SCALES
        )  # (classes, classes) each
    else:
        phi = traces[target]
        target_names, target_masks = target_classes(target, phi.shape[2:], trace.shape[2:], names, flat_masks)
        c, d = trace.shape[:2]
        both = torch.cat([trace.reshape(c, d, -1), phi.reshape(c, d, -1)], dim=2)  # one jackknife over chains
        split = flat_masks.shape[1]
        (neg_cov, cov_se, df), (neg_corr, corr_se, _) = jackknife(
            lambda t: class_bif_cross(t[:, :, :split], flat_masks, t[:, :, split:], target_masks), both, scales=SCALES
        )  # (classes, target classes) each
    sizes = flat_masks.sum(dim=1).tolist()
    target_sizes = target_masks.sum(dim=1).tolist()
    i, j = (x.ravel() for x in np.indices((len(names), len(target_names))))
    return StageOutput(
        tables={
            "r_class_bif": {
                "observable": [observable] * i.size,
                "target_observable": [target] * i.size,
                "source_class": [names[k] for k in i],
                "target_class": [target_names[k] for k in j],
                **estimate_rows("bif_cov", neg_cov, cov_se, df),
                **estimate_rows("bif_corr", neg_corr, corr_se, df, "fisher_z"),
                "n_source": [sizes[k] for k in i],
                "n_target": [int(target_sizes[k]) for k in j],
            }
        }
    )


def target_classes(target: str, shape, source_shape, names: list[str], masks):
    """The target's classes: the source's token classes when φ is per token on the same set (same shape), else one
    class, φ as a whole (its items averaged), named after the observable."""
    import torch

    if tuple(shape) == tuple(source_shape):
        return names, masks
    n_items = int(torch.tensor(shape).prod()) if len(shape) else 1
    return [target], torch.ones(1, n_items, dtype=torch.bool)


def target_problems(study, index: int, analysis) -> list:
    """A per-token target must track the source observable's set (its tokens are classed by the same masks)."""
    if analysis.target is None:
        return []
    by_name = {o.name: o for o in study.observables}
    source, target = by_name.get(analysis.observable), by_name.get(analysis.target)
    if source is None or target is None:
        return []  # the reference check reports it
    data = getattr(target, "data", None)  # None: not an observable of a data set (e.g. an induction score)
    if data is not None and getattr(target, "reduce", "per_sample") == "per_sample" and data != source.data:
        return [
            (
                ("analyses", index, "target"),
                f"class_bif target {target.name!r} tracks data set {target.data!r}, the source observable "
                f"{source.name!r} tracks {source.data!r}: a per-token target needs the same set (or reduce: mean)",
            )
        ]
    return []


KIND = AnalysisKind(
    name="class_bif",
    # 6: within-class blocks over distinct token pairs (the self-pairs a = b, −Var(l_a) and −1, left out; a one-token
    # class with itself is NULL); 5: bif_corr's interval on Fisher's z (inside [-1, 1]), its _se the delta-method (1 -
    # r²)·SE_z; 4: standard errors and 95% intervals; 3: keyed on its declared fields (no name); 2: masks are an input
    version=6,
    run="sbif_dsl.stages.class_bif:run",
    spec=ClassBifAnalysis,
    attach="sample",
    references=("observable", "target"),
    any_observable=("target",),
    problems=target_problems,
    classes=True,
    params=token_set_params,
    tables=(
        Table(
            "r_class_bif",
            "observable VARCHAR, source_class VARCHAR, target_class VARCHAR, n_source BIGINT, n_target BIGINT, "
            + estimate_columns("bif_cov", "bif_corr")
            + ", target_observable VARCHAR",
        ),
    ),
    views=(
        View(
            "class_bif",
            """
        SELECT ss.study, sr.step, ss.analysis, b.observable, b.source_class, b.target_class, b.bif_cov, b.bif_corr,
               b.n_source, b.n_target, b.bif_cov_se, b.bif_cov_lo, b.bif_cov_hi, b.bif_corr_se, b.bif_corr_lo,
               b.bif_corr_hi, coalesce(b.target_observable, b.observable) AS target_observable
        FROM {scope} JOIN r_class_bif b ON b.key = sr.key""",
            "class x class token influence per checkpoint: bif_cov = -Cov, bif_corr = -Corr (block means), with _se "
            "and 95% intervals _lo.._hi (bif_corr's on Fisher's z); target_observable: what the source classes "
            "influence (the source observable itself, or a class_bif `target`: its token classes, or one class named "
            "after it)",
        ),
    ),
)

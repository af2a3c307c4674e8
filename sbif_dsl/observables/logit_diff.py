"""`logit_diff`: the correct class's logit minus the largest other logit (a margin; > 0 = predicted right)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import REDUCE_DOC, DataObservable, Reduce, class_view, reducer, scalar_names
from .kind import Measure, ObservableKind


class LogitDiffObservable(DataObservable):
    """Logit of the correct class (next token) minus the largest other logit, at every draw."""

    KEYED = ("kind", "name", "data", "reduce")
    KEYED_IF_SET = ("first",)
    UNKEYED = ()

    kind: Literal["logit_diff"] = Field(description="Correct-class logit minus the largest other logit.")
    reduce: Reduce = Field(default="per_sample", description=REDUCE_DOC)


def margin(logits, labels):
    """z[label] − max_{c ≠ label} z[c], per sample (per token)."""
    import torch

    right = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.unsqueeze(-1), float("-inf")) if logits.shape[-1] > 1 else logits
    return right - others.amax(dim=-1) if logits.shape[-1] > 1 else torch.zeros_like(right)


def measure(rt, spec: LogitDiffObservable) -> Measure:
    view = class_view(rt)
    return Measure(
        on_outputs=lambda out, y: margin(*view(out, y)),
        reduce=reducer(spec.reduce),
        names=scalar_names(spec.reduce),
    )


KIND = ObservableKind("logit_diff", LogitDiffObservable, "sbif_dsl.observables.logit_diff:measure")

"""`target_prob`: the probability the model gives the correct class (next token)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import REDUCE_DOC, DataObservable, Reduce, class_view, reducer, scalar_names
from .kind import Measure, ObservableKind


class TargetProbObservable(DataObservable):
    """softmax(logits)[correct class] at every draw."""

    KEYED = ("kind", "name", "data", "reduce")
    KEYED_IF_SET = ("first",)
    UNKEYED = ()

    kind: Literal["target_prob"] = Field(description="Probability of the correct class (next token).")
    reduce: Reduce = Field(default="per_sample", description=REDUCE_DOC)


def measure(rt, spec: TargetProbObservable) -> Measure:
    view = class_view(rt)

    def prob(out, y):
        logits, labels = view(out, y)
        return logits.float().softmax(dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    return Measure(on_outputs=prob, reduce=reducer(spec.reduce), names=scalar_names(spec.reduce))


KIND = ObservableKind("target_prob", TargetProbObservable, "sbif_dsl.observables.target_prob:measure")

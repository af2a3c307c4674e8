"""`accuracy`: whether the model's top class is the correct one (1/0 per sample; `reduce: mean` = accuracy)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import DataObservable, Reduce, class_view, reducer, scalar_names
from .kind import Measure, ObservableKind


class AccuracyObservable(DataObservable):
    """argmax(logits) == correct class, at every draw."""

    KEYED = ("kind", "name", "data", "reduce")
    KEYED_IF_SET = ("first",)
    UNKEYED = ()

    kind: Literal["accuracy"] = Field(description="Top-1 correctness of the correct class (next token).")
    reduce: Reduce = Field(
        default="mean",
        description="mean (default): the set's accuracy, one value per draw (a BIF vector over the sources); "
        "per_sample: each sample's 0/1 correctness (per token for a language model; a per-sample 0/1 that never "
        "flips has no variance and a NaN correlation).",
    )


def measure(rt, spec: AccuracyObservable) -> Measure:
    view = class_view(rt)

    def correct(out, y):
        logits, labels = view(out, y)
        return (logits.argmax(dim=-1) == labels).float()

    return Measure(on_outputs=correct, reduce=reducer(spec.reduce), names=scalar_names(spec.reduce))


KIND = ObservableKind("accuracy", AccuracyObservable, "sbif_dsl.observables.accuracy:measure")

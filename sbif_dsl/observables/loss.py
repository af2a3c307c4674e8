"""`loss`: the data's per-sample (per-token) losses of a sample set, the default observable kind."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import DataObservable
from .kind import Measure, ObservableKind


class LossObservable(DataObservable):
    """A sample set whose per-sample (per-token) losses are recorded at every SGLD draw."""

    KEYED = ("name", "data")
    KEYED_IF_SET = ("kind", "first")  # added after caches existed: a plain loss observable keeps its key
    UNKEYED = ()

    kind: Literal["loss"] = Field(default="loss", description="The data's loss of each sample (the default).")


def measure(rt, spec: LossObservable) -> Measure:
    return Measure(on_outputs=rt.dataset.loss, is_loss=True)


KIND = ObservableKind("loss", LossObservable, "sbif_dsl.observables.loss:measure")

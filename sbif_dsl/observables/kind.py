"""What an observable kind declares, and the `Measure` the sample stage records.

A measure is computed in the same forward pass as the tracked losses of its data set when it is a function of the
model's outputs (`on_outputs`); a function of the parameters and a batch (`on_params`, e.g. attention patterns on
a probe) makes its own forward pass over its own inputs. Either returns one value per sample, `[B]` or `[B, T]`
(or `[B, ...]` that `reduce` folds), and `reduce` turns the recorded (chains, draws, n, ...) trace into what the
analyses read: (chains, draws, n[, T]) per sample, or (chains, draws, 1) for a scalar observable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Measure:
    """How one observable is recorded at every draw (built at run time from its spec)."""

    on_outputs: Callable | None = None  # (outputs, targets) -> [B, ...]: shares its data set's forward pass
    on_params: Callable | None = None  # (forward, inputs, targets) -> [B, ...]: forward(x, **kw) runs the model
    inputs: Any = None  # (inputs, targets) of its own batch (on_params); None: its data set's
    reduce: Callable | None = None  # trace (chains, draws, n, ...) -> (chains, draws, n'[, T]); None: as recorded
    names: list[str] | None = None  # the recorded items (r_tracked.sample_name); None: its data set's samples
    is_loss: bool = False  # the data's own loss: per-token analyses (class_bif, token_bif, ...) read only these


@dataclass(frozen=True)
class ObservableKind:
    """An observable kind: its spec model, `measure` ("module:function", imported when a sample stage runs) and
    `key` (rt, spec) -> extra keyed params (a hook's source hash, a probe's seed)."""

    name: str
    spec: Any
    measure: str
    key: Callable[..., dict] | None = None

    def load_measure(self) -> Callable[..., Measure]:
        import importlib

        module, _, fn = self.measure.partition(":")
        return getattr(importlib.import_module(module), fn)

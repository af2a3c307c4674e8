"""One module per stage kind, each declaring its `KIND` (stages/kind.py); `stages/kinds.py` lists them.

A stage's run function is resolved from its kind lazily, so that a worker process imports only what it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .base import Inputs, Stage, StageMeta, StageOutput, WorkerContext


def kind_of(stage: Stage):
    from .kinds import BY_NAME

    return BY_NAME[stage.runner]


def runner(stage: Stage) -> Callable[..., StageOutput]:
    module, _, name = kind_of(stage).run.partition(":")
    return getattr(importlib.import_module(module), name)


def builds_model(stage: Stage) -> bool:
    """Whether a stage builds and evaluates the model (a GPU helps; a Ray task gives it its CPU threads)."""
    return kind_of(stage).model


__all__ = ["Inputs", "Stage", "StageMeta", "StageOutput", "WorkerContext", "builds_model", "kind_of", "runner"]

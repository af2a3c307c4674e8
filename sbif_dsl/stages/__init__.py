"""One module per stage kind; each builds `Stage`s (with content keys) and runs them.

`RUNNERS` names each stage's run function (a stage's `runner`, by default its kind); it is resolved lazily so
that a worker process imports only what it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .base import Inputs, Stage, StageMeta, StageOutput, WorkerContext

RUNNERS: dict[str, str] = {
    "dataset": "sbif_dsl.stages.dataset:run",
    "train": "sbif_dsl.stages.train:run",
    "load": "sbif_dsl.stages.load:run",
    "token_classes": "sbif_dsl.stages.tokens:run",
    "sample": "sbif_dsl.stages.sample:run",
    "bif": "sbif_dsl.stages.analyses:run_bif",
    "llc": "sbif_dsl.stages.analyses:run_llc",
    "loss_kernel": "sbif_dsl.stages.analyses:run_loss_kernel",
    "class_bif": "sbif_dsl.stages.lm:run_class_bif",
    "token_bif": "sbif_dsl.stages.lm:run_token_bif",
    "induction_score": "sbif_dsl.stages.lm:run_induction_score",
    "class_loss": "sbif_dsl.stages.lm:run_class_loss",
    "loo": "sbif_dsl.stages.loo:run",
    "agreement": "sbif_dsl.stages.agreement:run",
    "calibration": "sbif_dsl.calibrate:run_stage",
}

# Runners that build and evaluate the model (the ones a GPU helps, and that a Ray task gives its CPU threads).
MODEL_RUNNERS = frozenset({"train", "load", "sample", "induction_score", "class_loss", "loo", "calibration"})


def runner(stage: Stage) -> Callable[..., StageOutput]:
    module, _, name = RUNNERS[stage.runner].partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["Inputs", "MODEL_RUNNERS", "RUNNERS", "Stage", "StageMeta", "StageOutput", "WorkerContext", "runner"]

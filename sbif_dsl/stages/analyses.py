"""Per-checkpoint analyses over a sample stage's traces: BIF, LLC, loss kernel. Cheap; no sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..influence import bif_matrices, loss_kernel
from ..sampling.llc import llc_per_chain
from ..spec.models import analysis_name
from .base import Inputs, Stage, StageMeta, StageOutput
from .sample import read_batch_losses, read_summary, read_traces

VERSIONS = {"bif": 1, "llc": 2, "loss_kernel": 1}  # llc 2: batch losses read from the sample's artifact


def build(rt, analysis, sample: Stage) -> Stage:
    name = analysis_name(analysis)
    return Stage(
        kind=analysis.kind,
        version=VERSIONS[analysis.kind],
        params={"analysis": analysis.model_dump(mode="json"), "name": name},
        inputs=(sample.key,),
        meta=StageMeta(step=sample.step, analysis=name, parent=sample.key, label=f"{name} at step {sample.step}"),
    )


def _pairs(n: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.indices((n, q), dtype=np.int32)
    return i.ravel(), j.ravel()


def _per_sample(trace: torch.Tensor) -> torch.Tensor:
    """Per-token traces (C, D, n, T) reduce to per-sequence mean loss (C, D, n)."""
    return trace.mean(dim=-1) if trace.dim() == 4 else trace


def run_bif(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    a = stage.params["analysis"]
    traces = read_traces(inputs, stage.inputs[0])
    source = a["source"]
    target = a["target"] or source
    neg_cov, neg_corr = bif_matrices(_per_sample(traces[source]), _per_sample(traces[target]))  # (n, q)
    i, j = _pairs(*neg_cov.shape)
    cov, corr = neg_cov.numpy().ravel(), neg_corr.numpy().ravel()
    return StageOutput(
        tables={
            "r_bif": {
                "source_observable": [source] * i.size,
                "source_idx": i,
                "target_observable": [target] * i.size,
                "target_idx": j,
                "bif_cov": cov,
                "bif_corr": corr,
                "value": corr if a["normalize"] == "pearson" else cov,
            }
        }
    )


def run_llc(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    summary = read_summary(inputs, stage.inputs[0])
    batch_losses = read_batch_losses(inputs, stage.inputs[0])  # (chains, draws)
    chains = batch_losses.shape[0]
    llc = llc_per_chain(batch_losses, summary["init_loss"], summary["nbeta"])  # (chains,)
    return StageOutput(
        tables={
            "r_llc": {
                "chain": np.arange(chains),
                "llc": llc.numpy().astype(float),
                "init_loss": [summary["init_loss"]] * chains,
                "mean_loss": batch_losses.mean(dim=1).numpy(),
            }
        }
    )


def run_loss_kernel(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    observable = stage.params["analysis"]["observable"]
    cov, corr = loss_kernel(_per_sample(read_traces(inputs, stage.inputs[0])[observable]))
    i, j = _pairs(*cov.shape)
    return StageOutput(
        tables={
            "r_loss_kernel": {
                "observable": [observable] * i.size,
                "i": i,
                "j": j,
                "cov": cov.numpy().ravel(),
                "corr": corr.numpy().ravel(),
            }
        }
    )

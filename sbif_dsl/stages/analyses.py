"""Per-checkpoint analyses over a sample stage's traces: BIF, LLC, loss kernel. Cheap; no sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..influence import bif_matrices, loss_kernel
from ..sampling.llc import llc_per_chain
from ..spec.models import analysis_name
from ..store import StageOutput
from .base import Stage
from .sample import load_summary, load_traces

VERSIONS = {"bif": 1, "llc": 1, "loss_kernel": 1}


def build(session, analysis, sample: Stage) -> Stage:
    name = analysis_name(analysis)
    return Stage(
        kind=analysis.kind,
        version=VERSIONS[analysis.kind],
        fields={"analysis": analysis.model_dump(mode="json"), "name": name},
        inputs=[sample.key],
        run=RUNNERS[analysis.kind],
        step=sample.step,
        analysis=name,
        parent=sample.key,
        label=f"{name} at step {sample.step}",
        payload={"analysis": analysis},
    )


def _pairs(n: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.indices((n, q), dtype=np.int32)
    return i.ravel(), j.ravel()


def _per_sample(trace: torch.Tensor) -> torch.Tensor:
    """Per-token traces (C, D, n, T) reduce to per-sequence mean loss (C, D, n)."""
    return trace.mean(dim=-1) if trace.dim() == 4 else trace


def run_bif(session, stage: Stage, out_dir: Path) -> StageOutput:
    a = stage.payload["analysis"]
    traces = load_traces(session, stage.parent)
    target = a.target or a.source
    neg_cov, neg_corr = bif_matrices(_per_sample(traces[a.source]), _per_sample(traces[target]))  # (n, q)
    i, j = _pairs(*neg_cov.shape)
    cov, corr = neg_cov.numpy().ravel(), neg_corr.numpy().ravel()
    return StageOutput(
        tables={
            "r_bif": {
                "source_observable": [a.source] * i.size,
                "source_idx": i,
                "target_observable": [target] * i.size,
                "target_idx": j,
                "bif_cov": cov,
                "bif_corr": corr,
                "value": corr if a.normalize == "pearson" else cov,
            }
        }
    )


def run_llc(session, stage: Stage, out_dir: Path) -> StageOutput:
    summary = load_summary(session, stage.parent)
    with session.store.connect(read_only=True, views=False) as con:
        rows = con.execute(
            "SELECT chain, draw, loss FROM r_batch_losses WHERE key = ? ORDER BY chain, draw", [stage.parent]
        ).fetchnumpy()
    chains = int(rows["chain"].max()) + 1
    batch_losses = torch.from_numpy(rows["loss"].reshape(chains, -1))  # (chains, draws)
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


def run_loss_kernel(session, stage: Stage, out_dir: Path) -> StageOutput:
    a = stage.payload["analysis"]
    cov, corr = loss_kernel(_per_sample(load_traces(session, stage.parent)[a.observable]))
    i, j = _pairs(*cov.shape)
    return StageOutput(
        tables={
            "r_loss_kernel": {
                "observable": [a.observable] * i.size,
                "i": i,
                "j": j,
                "cov": cov.numpy().ravel(),
                "corr": corr.numpy().ravel(),
            }
        }
    )


RUNNERS = {"bif": run_bif, "llc": run_llc, "loss_kernel": run_loss_kernel}

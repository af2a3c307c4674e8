"""Language-model analyses: class × class and token × token BIF from per-token traces, and the
checkpoint-only curves (induction score, per-class loss) that need no sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError
from ..influence import bif_matrices, class_bif
from ..spec.models import analysis_name
from . import tokens as token_stage
from .base import Inputs, Stage, StageMeta, StageOutput
from .sample import module_at, read_traces

VERSIONS = {"class_bif": 2, "token_bif": 1, "induction_score": 2, "class_loss": 2}  # 2: masks read from input
ON_CHECKPOINT = ("induction_score", "class_loss")  # need no sampling: a function of the checkpoint's weights
USES_CLASSES = ("class_bif", "class_loss")


def build(rt, analysis, parent: Stage, tokens_key: str | None) -> Stage:
    """parent is the sample stage (class_bif, token_bif) or the checkpoint stage (induction_score, class_loss);
    the checkpoint's weights are always the parent's first input or the parent itself."""
    name = analysis_name(analysis)
    if analysis.kind in USES_CLASSES and tokens_key is None:
        raise AssertionError(f"internal: {analysis.kind} needs the token-classes stage")
    inputs = (parent.key,) + ((tokens_key,) if analysis.kind in USES_CLASSES else ())
    params = {"analysis": analysis.model_dump(mode="json"), "name": name}
    observable = getattr(analysis, "observable", None)
    if observable is not None:
        params["data_set"] = _observable_set(rt, observable)
    if analysis.kind in ON_CHECKPOINT:
        params.update(dtype=rt.study.dtype, device=rt.study.device, seed=rt.study.seed)
    return Stage(
        kind=analysis.kind,
        version=VERSIONS[analysis.kind],
        params=params,
        inputs=inputs,
        meta=StageMeta(step=parent.step, analysis=name, parent=parent.key, label=f"{name} at step {parent.step}"),
    )


def _observable_set(rt, observable: str) -> str:
    data_set = next(o.data for o in rt.study.observables if o.name == observable)
    if not token_stage.is_token_set(rt, data_set):
        raise UsageError(
            f"observable {observable!r} does not hold token sequences; class/token analyses need a language dataset"
        )
    return data_set


def run_class_bif(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    observable = stage.params["analysis"]["observable"]
    trace = read_traces(inputs, stage.inputs[0])[observable]  # (chains, draws, n, T-1)
    names, masks = token_stage.read_masks(inputs, stage.inputs[1], stage.params["data_set"])  # (classes, n, T-1)
    c, d = trace.shape[:2]
    neg_cov, neg_corr = class_bif(trace.reshape(c, d, -1), masks.reshape(len(names), -1))  # (classes, classes)
    sizes = masks.reshape(len(names), -1).sum(dim=1).tolist()
    i, j = (x.ravel() for x in np.indices((len(names), len(names))))
    return StageOutput(
        tables={
            "r_class_bif": {
                "observable": [observable] * i.size,
                "source_class": [names[k] for k in i],
                "target_class": [names[k] for k in j],
                "bif_cov": neg_cov.numpy().ravel(),
                "bif_corr": neg_corr.numpy().ravel(),
                "n_source": [sizes[k] for k in i],
                "n_target": [sizes[k] for k in j],
            }
        }
    )


def run_token_bif(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    a, data_set = stage.params["analysis"], stage.params["data_set"]
    observable = a["observable"]
    names = rt.dataset.sets()[data_set].names
    index = {n: i for i, n in enumerate(names)}
    missing = [s for s in a["sequences"] if s not in index]
    if missing:
        raise UsageError(f"analysis {stage.analysis!r}: no sequence {missing[0]!r} in {data_set!r} (e.g. {names[0]!r})")
    trace = read_traces(inputs, stage.inputs[0])[observable]  # (chains, draws, n, T-1)
    n_pos = trace.shape[-1]
    positions = a["positions"] if a["positions"] is not None else list(range(n_pos))
    bad = [p for p in positions if p >= n_pos]
    if bad:
        raise UsageError(f"analysis {stage.analysis!r}: position {bad[0]} is outside 0..{n_pos - 1}")
    seqs = [index[s] for s in a["sequences"]]
    sl = trace[:, :, seqs][:, :, :, positions]  # (chains, draws, n_seq, n_pos)
    c, d = sl.shape[:2]
    neg_cov, neg_corr = bif_matrices(sl.reshape(c, d, -1), sl.reshape(c, d, -1))  # (k, k)
    seq_idx = np.repeat(np.array(seqs, dtype=np.int32), len(positions))
    pos_idx = np.tile(np.array(positions, dtype=np.int32), len(seqs))
    i, j = (x.ravel() for x in np.indices(neg_cov.shape))
    return StageOutput(
        tables={
            "r_token_bif": {
                "observable": [observable] * i.size,
                "source_idx": seq_idx[i],
                "source_pos": pos_idx[i],
                "target_idx": seq_idx[j],
                "target_pos": pos_idx[j],
                "bif_cov": neg_cov.numpy().ravel(),
                "bif_corr": neg_corr.numpy().ravel(),
            }
        }
    )


def run_induction_score(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    from ..tokens.induction import induction_score

    a = stage.params["analysis"]
    module = module_at(rt, stage, inputs).eval()
    context = rt.dataset.train.inputs.shape[1]
    # The tokens induction can copy: the synthetic language's repeated spans are letters; elsewhere, every
    # token seen in training (untrained embeddings would understate the score).
    pool = rt.dataset.meta.get("induction_token_pool") or torch.unique(rt.dataset.train.inputs).tolist()
    try:
        res = induction_score(
            module,
            a["seq_len"] or context,
            a["n_seqs"],
            rt.tokenizer.vocab_size,
            seed=stage.params["seed"],
            token_pool=pool,
        )
    except TypeError as e:
        raise UsageError(f"induction_score: {e}") from None
    return StageOutput(
        tables={
            "r_induction": {
                "score": [float(res["score"])],
                "loss_first_copy": [float(res["loss_first_copy"])],
                "loss_second_copy": [float(res["loss_second_copy"])],
            }
        }
    )


def run_class_loss(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    observable, data_set = stage.params["analysis"]["observable"], stage.params["data_set"]
    module = module_at(rt, stage, inputs).eval()
    s = rt.dataset.sets()[data_set]
    with torch.no_grad():
        losses = torch.cat(
            [
                rt.dataset.loss(module(rt.on_device(s.inputs[i : i + 256])), rt.on_device(s.targets[i : i + 256])).cpu()
                for i in range(0, len(s), 256)
            ]
        ).to(torch.float64)  # (n, T-1)
    names, masks = token_stage.read_masks(inputs, stage.inputs[1], data_set)  # (classes, n, T-1)
    m = masks.to(torch.float64)
    counts = m.sum(dim=(1, 2))
    means = (m * losses).sum(dim=(1, 2)) / counts.clamp_min(1)
    return StageOutput(
        tables={
            "r_class_loss": {
                "observable": [observable] * len(names),
                "class": names,
                "loss": [float(v) if c > 0 else None for v, c in zip(means, counts)],
                "n_tokens": counts.to(torch.int64).tolist(),
            }
        }
    )

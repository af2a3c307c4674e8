"""Checkpoint stages of an in-spec training run, one per saved step.

A checkpoint's state file holds weights, optimizer and RNG state, so training resumes from a checkpoint at or
before the one requested (the stage's `warm_start`, chosen at plan time: the previous checkpoint of the plan or
the latest cached one of the same lineage): adding a checkpoint trains only the new segment, and a killed run
resumes where its last committed checkpoint left off. Resumed and uninterrupted runs are bitwise equal, which is
why the start point is not part of the key.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from ..hashing import canonical_json, derive_seed, sha256_hex
from ..runtime import save_blob, state_digest
from .base import Inputs, Stage, StageMeta, StageOutput

VERSION = 2  # 2: device in the key is the spec's (auto/cpu/cuda), not where it ran; resume is a declared input


def lineage_fields(rt) -> dict:
    """Everything that determines the weights at any step (not which steps are saved)."""
    study = rt.study
    training = study.training.model_dump(mode="json", exclude={"checkpoints"})
    return {
        "model": study.model.model_dump(mode="json"),
        "model_code": rt.model_fingerprint(),
        "training": training,
        "seed": study.seed,
        "dtype": study.dtype,
        "device": study.device,
    }


def lineage_of(fields: dict, dataset_key: str) -> str:
    """The training run a checkpoint belongs to (its fields without the step, and its data)."""
    return sha256_hex(canonical_json([{k: v for k, v in fields.items() if k != "step"}, dataset_key]))


def build(rt, dataset_key: str, cached_checkpoints) -> list[Stage]:
    """cached_checkpoints(lineage) -> [(key, step)] of the lineage's complete checkpoints in the cache."""
    fields = lineage_fields(rt)
    lineage = lineage_of(fields, dataset_key)
    cached = cached_checkpoints(lineage)
    stages: list[Stage] = []
    for step in rt.study.training.checkpoint_steps():
        previous = stages[-1] if stages else None
        before = [(k, s) for k, s in cached if s < step and (previous is None or s > previous.step)]
        warm = before[-1][0] if before else None
        stages.append(
            Stage(
                kind="checkpoint",
                runner="train",
                version=VERSION,
                params={**fields, "step": step},
                inputs=(dataset_key,),
                meta=StageMeta(step=step, label=f"train to step {step}"),
                warm_start=warm or (previous.key if previous else None),
            )
        )
    return stages


def _optimizer(params, training):
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay)
    cls = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=training.lr, weight_decay=training.weight_decay)


def _full_loss(rt, module, loss) -> float:
    s = rt.dataset.train
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(s), 1024):
            out = loss(module(rt.on_device(s.inputs[i : i + 1024])), rt.on_device(s.targets[i : i + 1024]))
            total += float(out.sum())
            count += out.numel()
    return total / count


def training_settings(fields: dict) -> SimpleNamespace:
    """The keyed training block as attributes (optimizer, lr, batch_size, steps, log_every, ...)."""
    return SimpleNamespace(**fields["training"])


def start_training(rt, fields: dict):
    """Step-0 state of a lineage's training run: seeded initial weights, fresh optimizer, batch generator."""
    module = rt.new_module(init_seed=derive_seed(fields["seed"], "init"))
    rt.check_loss_contract(module)
    opt = _optimizer(module.parameters(), training_settings(fields))
    gen = torch.Generator().manual_seed(derive_seed(fields["seed"], "train-batches"))
    return module, opt, gen


def train_segment(module, opt, gen, x_all, y_all, loss, training, start: int, stop: int, progress=None):
    """Optimizer steps start..stop-1 on (x_all, y_all), minibatches drawn from `gen` (full batch: the mean loss
    over all given samples). Shared by checkpoint training and leave-one-out retraining (stages/loo.py), so
    both follow exactly the same schedule. Returns the logged (steps, batch losses)."""
    n = x_all.shape[0]
    every = training.log_every or max(1, training.steps // 1000)
    curve_steps, curve_losses = [], []
    perm, pos = None, n
    for step in range(start, stop):
        if training.batch_size is None or training.batch_size >= n:
            x, y = x_all, y_all
        else:
            if pos + training.batch_size > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + training.batch_size].to(x_all.device)
            pos += training.batch_size
            x, y = x_all[idx], y_all[idx]
        batch_loss = loss(module(x), y).mean()
        if step % every == 0:
            curve_steps.append(step)
            curve_losses.append(batch_loss.detach())
        opt.zero_grad(set_to_none=True)
        batch_loss.backward()
        opt.step()
        if progress and (step - start) % 100 == 0:
            progress(step - start, stop - start)
    return curve_steps, curve_losses


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    fields, target = stage.params, stage.params["step"]
    lineage = lineage_of(fields, stage.inputs[0])
    module, opt, gen = start_training(rt, fields)
    start = 0
    if stage.warm_start is not None:
        state = torch.load(inputs.file(stage.warm_start, "state.pt"), map_location="cpu", weights_only=True)
        if state["step"] > target:
            raise AssertionError(f"internal: warm start at step {state['step']} is after {target}")
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start = state["step"]

    data, loss = rt.dataset.train, rt.dataset.loss
    x_all, y_all = rt.on_device(data.inputs), rt.on_device(data.targets)
    curve_steps, curve_losses = train_segment(
        module, opt, gen, x_all, y_all, loss, training_settings(fields), start, target, progress
    )

    final_loss = _full_loss(rt, module, loss)
    if not torch.isfinite(torch.tensor(final_loss)):
        from ..errors import SbifError

        raise SbifError(f"training diverged before step {target} (loss {final_loss}); hint: lower training.lr")
    model_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    blob = {"model": model_state, "optimizer": opt.state_dict(), "generator": gen.get_state(), "step": target}
    save_blob(blob, out_dir / "state.pt")
    curve_steps.append(target)
    curve_losses.append(torch.tensor(final_loss))
    return StageOutput(
        tables={
            "r_checkpoints": {
                "step": [target],
                "weights_sha256": [state_digest(model_state)],
                "source": ["trained"],
                "lineage": [lineage],
                "train_loss": [final_loss],
            },
            "r_training_curve": {
                "lineage": [lineage] * len(curve_steps),
                "step": curve_steps,
                "loss": [float(v) for v in torch.stack(curve_losses).cpu()],
            },
        },
        artifacts={"state.pt": out_dir / "state.pt"},
    )

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

from ..hashing import canonical_json, derive_seed, sha256_hex
from .base import Inputs, Stage, StageMeta, StageOutput
from .kind import Kind, Table, View

CURVE_POINTS = 100_000  # the training curve records the batch loss of every step, or of every k-th past this


def lineage_fields(rt) -> dict:
    """Everything that determines the weights at any step (not which steps are saved)."""
    study = rt.study
    return {
        "model": study.model.key_params(),
        "model_code": rt.model_fingerprint(),
        "training": study.training.key_params(),
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
                version=KIND.version,
                params={**fields, "step": step},
                inputs=(dataset_key,),
                meta=StageMeta(step=step, label=f"train to step {step}"),
                warm_start=warm or (previous.key if previous else None),
            )
        )
    return stages


def _optimizer(params, training):
    import torch

    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay)
    cls = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=training.lr, weight_decay=training.weight_decay)


def training_settings(fields: dict) -> SimpleNamespace:
    """The keyed training block as attributes (optimizer, lr, momentum, weight_decay, steps, batch_size)."""
    return SimpleNamespace(**fields["training"])


def start_training(rt, fields: dict):
    """Step-0 state of a lineage's training run: seeded initial weights, fresh optimizer, batch generator."""
    import torch

    module = rt.new_module(init_seed=derive_seed(fields["seed"], "init"))
    rt.check_loss_contract(module)
    opt = _optimizer(module.parameters(), training_settings(fields))
    gen = torch.Generator().manual_seed(derive_seed(fields["seed"], "train-batches"))
    return module, opt, gen


def train_segment(
    module, opt, gen, x_all, y_all, loss, training, start: int, stop: int, progress=None, progress_every: int = 100
):
    """Optimizer steps start..stop-1 on (x_all, y_all), minibatches drawn from `gen` (full batch: the mean loss
    over all given samples). Shared by checkpoint training and leave-one-out retraining (stages/loo.py), so
    both follow exactly the same schedule. Returns the recorded (steps, batch losses): every step's, or every k-th
    past CURVE_POINTS steps (a function of the keyed schedule, so the curve is part of the checkpoint's result)."""
    import torch

    n = x_all.shape[0]
    every = -(-training.steps // CURVE_POINTS)
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
        if progress and (step - start) % progress_every == 0:
            progress(step - start, stop - start)
    return curve_steps, curve_losses


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import torch

    from ..runtime import save_blob, state_digest

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
    every = rt.study.training.log_every or 100  # progress cadence only: logging, never in a key
    curve_steps, curve_losses = train_segment(
        module, opt, gen, x_all, y_all, loss, training_settings(fields), start, target, progress, every
    )

    final_loss = float(rt.losses(module, data, loss).to(torch.float64).mean())
    if not torch.isfinite(torch.tensor(final_loss)):
        from ..errors import SbifError

        raise SbifError(f"training diverged before step {target} (loss {final_loss}); hint: lower training.lr")
    model_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    blob = {"model": model_state, "optimizer": opt.state_dict(), "generator": gen.get_state(), "step": target}
    save_blob(blob, out_dir / "state.pt")
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
                "loss": [float(v) for v in torch.stack(curve_losses).cpu()] if curve_losses else [],
            },
        },
        artifacts={"state.pt": out_dir / "state.pt"},
    )


KIND = Kind(
    name="train",
    # 3: keyed on the spec's declared fields (training.log_every is logging only); the curve records every step
    # 2: device in the key is the spec's (auto/cpu/cuda), not where it ran; resume is a declared input
    version=3,
    run="sbif_dsl.stages.train:run",
    model=True,
    tables=(
        Table(
            "r_checkpoints",
            "step BIGINT, weights_sha256 VARCHAR, source VARCHAR, lineage VARCHAR, train_loss DOUBLE",
        ),
        Table("r_training_curve", "lineage VARCHAR, step BIGINT, loss DOUBLE"),
    ),
    views=(
        View(
            "checkpoints",
            """
        SELECT ss.study, c.step, sr.key, c.weights_sha256, c.source, c.train_loss
        FROM {scope} JOIN r_checkpoints c ON c.key = sr.key""",
            "checkpoint steps with weight hashes and the full training loss at that step",
        ),
        View(
            "training_curve",
            """
        SELECT ss.study, t.step, t.loss
        FROM {scope} JOIN r_training_curve t ON t.key = sr.key
        ORDER BY ss.study, t.step""",
            "minibatch training loss at every optimizer step (every k-th past 100000 steps)",
        ),
    ),
)

"""Checkpoint stages of an in-spec training run, one per saved step.

A checkpoint's state file holds weights, optimizer and RNG state, so training resumes from the latest cached
checkpoint at or before the one requested: adding a checkpoint trains only the new segment, and a killed
run resumes where its last committed checkpoint left off. Resumed and uninterrupted runs are bitwise equal.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..hashing import canonical_json, derive_seed, sha256_hex
from ..runtime import save_blob, state_digest
from ..store import StageOutput
from .base import Stage

VERSION = 1


def lineage_fields(session) -> dict:
    """Everything that determines the weights at any step (not which steps are saved)."""
    study = session.study
    training = study.training.model_dump(mode="json", exclude={"checkpoints"})
    return {
        "model": study.model.model_dump(mode="json"),
        "model_code": session.model_fingerprint(),
        "training": training,
        "seed": study.seed,
        "dtype": study.dtype,
        "device": session.device.type,
    }


def build(session, dataset_key: str) -> list[Stage]:
    fields = lineage_fields(session)
    lineage = sha256_hex(canonical_json([fields, dataset_key]))
    study_seed = session.study.seed
    return [
        Stage(
            kind="checkpoint",
            version=VERSION,
            fields={**fields, "step": step},
            inputs=[dataset_key],
            run=run,
            step=step,
            label=f"train to step {step}",
            seed=derive_seed(study_seed, "init"),
            payload={"lineage": lineage, "study_seed": study_seed},
        )
        for step in session.study.training.checkpoint_steps()
    ]


def _optimizer(params, training):
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay)
    cls = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=training.lr, weight_decay=training.weight_decay)


def _resume_point(session, lineage: str, target: int):
    """Latest training state at or before `target`: in memory from this run, else from the cache."""
    mem = session.memo.get(("train", lineage))
    if mem is not None and mem["step"] <= target:
        return mem
    with session.store.connect(read_only=True, views=False) as con:
        rows = con.execute(
            """SELECT c.key, c.step FROM r_checkpoints c JOIN stage_registry s ON s.key = c.key
               WHERE c.lineage = ? AND c.step <= ? ORDER BY c.step DESC LIMIT 1""",
            [lineage, target],
        ).fetchall()
    if not rows:
        return None
    key = rows[0][0]
    done = session.store.complete_keys([key])
    if key not in done:
        return None
    return torch.load(session.store.artifact(key, "state.pt"), map_location="cpu", weights_only=True)


def _full_loss(session, module, loss) -> float:
    s = session.dataset.train
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(s), 1024):
            out = loss(module(session.on_device(s.inputs[i : i + 1024])), session.on_device(s.targets[i : i + 1024]))
            total += float(out.sum())
            count += out.numel()
    return total / count


def start_training(session, init_seed: int, study_seed: int):
    """Step-0 state of the study's training run: seeded initial weights, fresh optimizer, batch generator."""
    module = session.new_module(init_seed=init_seed)
    session.check_loss_contract(module)
    opt = _optimizer(module.parameters(), session.study.training)
    gen = torch.Generator().manual_seed(derive_seed(study_seed, "train-batches"))
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


def run(session, stage: Stage, out_dir: Path) -> StageOutput:
    training = session.study.training
    lineage, target = stage.payload["lineage"], stage.step
    module, opt, gen = start_training(session, stage.seed, stage.payload["study_seed"])
    start = 0
    state = _resume_point(session, lineage, target)
    if state is not None:
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start = state["step"]

    data, loss = session.dataset.train, session.dataset.loss
    x_all, y_all = session.on_device(data.inputs), session.on_device(data.targets)
    curve_steps, curve_losses = train_segment(
        module, opt, gen, x_all, y_all, loss, training, start, target, session.progress
    )

    final_loss = _full_loss(session, module, loss)
    if not torch.isfinite(torch.tensor(final_loss)):
        from ..errors import SbifError

        raise SbifError(f"training diverged before step {target} (loss {final_loss}); hint: lower training.lr")
    model_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    blob = {"model": model_state, "optimizer": opt.state_dict(), "generator": gen.get_state(), "step": target}
    save_blob(blob, out_dir / "state.pt")
    session.memo[("train", lineage)] = blob
    session.memo[("state", stage.key)] = model_state
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

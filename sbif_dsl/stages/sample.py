"""Sample stage: SGLD chains around one checkpoint, recording every tracked sample's loss at every draw.

Traces are stored as one Parquet artifact (long format, readable by the `loss_traces` view); the
minibatch losses feed the LLC.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..errors import NonFiniteError
from ..hashing import derive_seed
from ..runtime import default_nbeta, load_state
from ..sampling import SGLDConfig, run_chains
from .base import Inputs, Stage, StageMeta, StageOutput

VERSION = 3  # 3: device in the key is the spec's; batch losses are an artifact; no wall time in summary.json


def sampler_config(rt, sampler=None) -> SGLDConfig:
    """The run-time SGLD config of a spec sampler block (default: the study's): nβ and the batch resolved."""
    s = sampler if sampler is not None else rt.study.sampler
    n_train = len(rt.dataset.train)
    batch = min(s.batch_size or n_train, n_train)
    fields = s.model_dump(exclude={"nbeta", "batch_size"})
    return SGLDConfig(**fields, nbeta=s.nbeta or default_nbeta(batch), batch_size=batch)


def sampling_params(rt, checkpoint: Stage, cfg: SGLDConfig) -> dict:
    """What a set of chains at a checkpoint depends on besides its inputs (shared with calibration, whose grid
    point with the spec's own sampler reproduces the sample stage's chains)."""
    return {
        "sampler": dict(cfg.__dict__),
        "seed": derive_seed(rt.study.seed, "sample", checkpoint.key),
        "dtype": rt.study.dtype,
        "device": rt.study.device,
    }


def build(rt, checkpoint: Stage, dataset_key: str) -> Stage:
    observables = [o.model_dump(mode="json") for o in rt.study.observables]
    return Stage(
        kind="sample",
        version=VERSION,
        params={**sampling_params(rt, checkpoint, sampler_config(rt)), "observables": observables},
        inputs=(checkpoint.key, dataset_key),
        meta=StageMeta(step=checkpoint.step, parent=checkpoint.key, label=f"sample at step {checkpoint.step}"),
    )


def module_at(rt, stage: Stage, inputs: Inputs):
    """The spec's model with the weights of the stage's checkpoint input (its first input)."""
    module = rt.new_module()
    module.load_state_dict(load_state(inputs.file(stage.inputs[0], "state.pt")))
    return module


def _write_traces(path: Path, traces: dict[str, np.ndarray]) -> None:
    """Long format in (chain, draw, sample, pos) order, so reading back is a reshape."""
    parts = []
    for obs, arr in traces.items():
        arr4 = arr if arr.ndim == 4 else arr[..., None]  # (chains, draws, n, T)
        c, d, n, t = arr4.shape
        chain, draw, idx, pos = (a.ravel() for a in np.indices((c, d, n, t), dtype=np.int32))
        parts.append(
            pa.table(
                {
                    "observable": pa.DictionaryArray.from_arrays(np.zeros(chain.size, np.int32), [obs]),
                    "sample_idx": idx,
                    "pos": pos,
                    "chain": chain,
                    "draw": draw,
                    "loss": arr4.astype(np.float32, copy=False).ravel(),
                }
            )
        )
    pq.write_table(pa.concat_tables(parts), path, compression="zstd")


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    p = stage.params
    module = module_at(rt, stage, inputs)
    rt.check_loss_contract(module)
    params0 = {k: v.detach() for k, v in module.named_parameters()}
    sets = rt.dataset.sets()
    train = (rt.on_device(sets["train"].inputs), rt.on_device(sets["train"].targets))
    observables = p["observables"]
    tracked = [(rt.on_device(sets[o["data"]].inputs), rt.on_device(sets[o["data"]].targets)) for o in observables]
    cfg = SGLDConfig(**p["sampler"])
    try:
        res = run_chains(
            rt.loss_fn(module), params0, train, tracked, cfg,
            seed=p["seed"], progress=progress, replicate=rt.loss_fn_replica(module),
        )  # fmt: skip
    except NonFiniteError as e:
        raise NonFiniteError(e.chain, e.draw, context=f"checkpoint step {stage.step}") from None

    traces = {o["name"]: t.numpy() for o, t in zip(observables, res.traces)}
    summary = {"init_loss": res.init_loss, "nbeta": cfg.nbeta, "shapes": {k: list(v.shape) for k, v in traces.items()}}
    _write_traces(out_dir / "traces.parquet", traces)
    (out_dir / "summary.json").write_text(json.dumps(summary))
    bl = res.batch_losses.to(torch.float64).numpy()  # (chains, draws)
    np.save(out_dir / "batch_losses.npy", bl)

    tracked_rows: dict[str, list] = {"observable": [], "data_set": [], "sample_idx": [], "sample_name": []}
    for o in observables:
        names = sets[o["data"]].names
        tracked_rows["observable"] += [o["name"]] * len(names)
        tracked_rows["data_set"] += [o["data"]] * len(names)
        tracked_rows["sample_idx"] += list(range(len(names)))
        tracked_rows["sample_name"] += list(names)
    chain, draw = np.indices(bl.shape)
    return StageOutput(
        tables={
            "r_tracked": tracked_rows,
            "r_batch_losses": {"chain": chain.ravel(), "draw": draw.ravel(), "loss": bl.ravel()},
        },
        artifacts={name: out_dir / name for name in ("traces.parquet", "summary.json", "batch_losses.npy")},
        measured={"sampling_wall_s": res.wall_s},
    )


def read_traces(inputs: Inputs, sample_key: str) -> dict[str, torch.Tensor]:
    """Traces of a sample stage input as {observable: (chains, draws, n[, T])}."""
    shapes = read_summary(inputs, sample_key)["shapes"]
    table = pq.read_table(inputs.file(sample_key, "traces.parquet"), columns=["observable", "loss"])
    obs = table.column("observable").to_numpy()
    loss = table.column("loss").to_numpy()
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        if size and not (obs[offset : offset + size] == name).all():
            raise ValueError(f"traces of stage {sample_key[:12]} are not in the order their summary gives")
        out[name] = torch.from_numpy(loss[offset : offset + size].reshape(shape).copy())
        offset += size
    return out


def read_summary(inputs: Inputs, sample_key: str) -> dict:
    return json.loads(inputs.file(sample_key, "summary.json").read_text())


def read_batch_losses(inputs: Inputs, sample_key: str) -> torch.Tensor:
    """(chains, draws) minibatch losses of a sample stage input (the LLC's input)."""
    return torch.from_numpy(np.load(inputs.file(sample_key, "batch_losses.npy")))

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
from ..runtime import default_nbeta
from ..sampling import SGLDConfig, run_chains
from ..store import StageOutput
from .base import Stage

VERSION = 2  # 2: chains may loop (per-chain autograd, worker threads) and the config carries precision


def sampler_config(session, sampler=None) -> SGLDConfig:
    """The run-time SGLD config of a spec sampler block (default: the study's): nβ and the batch resolved."""
    s = sampler if sampler is not None else session.study.sampler
    n_train = len(session.dataset.train)
    batch = min(s.batch_size or n_train, n_train)
    fields = s.model_dump(exclude={"nbeta", "batch_size"})
    return SGLDConfig(**fields, nbeta=s.nbeta or default_nbeta(batch), batch_size=batch)


def build(session, checkpoint: Stage, dataset_key: str) -> Stage:
    cfg = sampler_config(session)
    observables = [o.model_dump() for o in session.study.observables]
    return Stage(
        kind="sample",
        version=VERSION,
        fields={
            "sampler": cfg.__dict__,
            "observables": observables,
            "seed": session.study.seed,
            "dtype": session.study.dtype,
            "device": session.device.type,
        },
        inputs=[checkpoint.key, dataset_key],
        run=run,
        step=checkpoint.step,
        parent=checkpoint.key,
        label=f"sample at step {checkpoint.step}",
        seed=derive_seed(session.study.seed, "sample", checkpoint.key),
        payload={"checkpoint": checkpoint},
    )


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


def run(session, stage: Stage, out_dir: Path) -> StageOutput:
    ckpt = stage.payload["checkpoint"]
    module = session.new_module()
    module.load_state_dict(session.load_state(ckpt.key, ckpt.payload.get("path")))
    session.check_loss_contract(module)
    params0 = {k: v.detach() for k, v in module.named_parameters()}
    sets = session.dataset.sets()
    train = (session.on_device(sets["train"].inputs), session.on_device(sets["train"].targets))
    observables = session.study.observables
    tracked = [(session.on_device(sets[o.data].inputs), session.on_device(sets[o.data].targets)) for o in observables]
    cfg = sampler_config(session)
    try:
        res = run_chains(
            session.loss_fn(module),
            params0,
            train,
            tracked,
            cfg,
            seed=stage.seed,
            progress=session.progress,
            replicate=session.loss_fn_replica(module),
        )
    except NonFiniteError as e:
        raise NonFiniteError(e.chain, e.draw, context=f"checkpoint step {ckpt.step}") from None

    traces = {o.name: t.numpy() for o, t in zip(observables, res.traces)}
    session.memo[("traces", stage.key)] = {k: torch.from_numpy(v) for k, v in traces.items()}
    summary = {
        "init_loss": res.init_loss,
        "nbeta": cfg.nbeta,
        "shapes": {k: list(v.shape) for k, v in traces.items()},
        "sampling_wall_s": res.wall_s,
    }
    session.memo[("summary", stage.key)] = summary
    _write_traces(out_dir / "traces.parquet", traces)
    (out_dir / "summary.json").write_text(json.dumps(summary))

    tracked_rows: dict[str, list] = {"observable": [], "data_set": [], "sample_idx": [], "sample_name": []}
    for o in observables:
        names = sets[o.data].names
        tracked_rows["observable"] += [o.name] * len(names)
        tracked_rows["data_set"] += [o.data] * len(names)
        tracked_rows["sample_idx"] += list(range(len(names)))
        tracked_rows["sample_name"] += list(names)
    bl = res.batch_losses.to(torch.float64).numpy()  # (chains, draws)
    chain, draw = np.indices(bl.shape)
    return StageOutput(
        tables={
            "r_tracked": tracked_rows,
            "r_batch_losses": {"chain": chain.ravel(), "draw": draw.ravel(), "loss": bl.ravel()},
        },
        artifacts={"traces.parquet": out_dir / "traces.parquet", "summary.json": out_dir / "summary.json"},
    )


def load_traces(session, sample_key: str) -> dict[str, torch.Tensor]:
    """Traces of a sample stage as {observable: (chains, draws, n[, T])}: from this run or from the cache."""
    memo_key = ("traces", sample_key)
    if memo_key not in session.memo:
        shapes = load_summary(session, sample_key)["shapes"]
        table = pq.read_table(session.store.artifact(sample_key, "traces.parquet"), columns=["observable", "loss"])
        obs = table.column("observable").to_numpy()
        loss = table.column("loss").to_numpy()
        out, offset = {}, 0
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            assert (obs[offset : offset + size] == name).all() if size else True
            out[name] = torch.from_numpy(loss[offset : offset + size].reshape(shape).copy())
            offset += size
        session.memo[memo_key] = out
    return session.memo[memo_key]


def load_summary(session, sample_key: str) -> dict:
    memo_key = ("summary", sample_key)
    if memo_key not in session.memo:
        session.memo[memo_key] = json.loads(session.store.artifact(sample_key, "summary.json").read_text())
    return session.memo[memo_key]

"""The devinterp side of the benchmark: its public `sample()` + `compute_bif()` (what its `bif()` calls).

devinterp (2.0.1) lives in the side environment that `setup_devinterp.sh` makes; nothing here is imported by
sbif_dsl. Its data protocol is a Hugging Face `Dataset` with an "input_ids" column and a per-token loss
`(model, input_ids) -> [batch, seq-1]`. The toy's items are encoded as rows [item, 0]; its loss looks the item
up and returns the item's squared error as one "token", so devinterp runs the toy unchanged.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from workloads import Workload


def available() -> str | None:
    """devinterp's version, or None when it cannot be imported here."""
    try:
        import importlib.metadata as md

        import devinterp.slt.bif  # noqa: F401

        return md.version("devinterp")
    except Exception:  # noqa: BLE001 - any import failure means "not here"
        return None


@dataclass
class DevinterpRun:
    sample_s: float
    bif_s: float
    traces: Tensor  # (chains, draws, n, T) float32, rows in OUR tracked order
    corr: np.ndarray  # the normalized BIF devinterp returns (+Corr), rows in OUR tracked order
    order: Tensor  # devinterp's observable row r is our tracked row order[r]


def _toy_loss(workload: Workload):
    x, y = workload.train, workload.train_targets

    def loss_fn(model, input_ids):  # (B, 2) -> (B, 1)
        item = input_ids[:, 0]
        out = model(x.to(input_ids.device)[item])
        return workload.loss(out, y.to(input_ids.device)[item])[:, None]

    return loss_fn


def _align(theirs: Tensor, ours: Tensor) -> Tensor:
    """order[r] = index in `ours` of devinterp's observable row r (devinterp shuffles the tracked rows)."""
    index = {tuple(row.tolist()): i for i, row in enumerate(ours)}
    if len(index) != ours.shape[0]:
        raise ValueError("tracked rows are not unique: cannot align devinterp's order with ours")
    return torch.tensor([index[tuple(row.tolist())] for row in theirs])


def run(workload: Workload, device: str, correlation_method: str) -> DevinterpRun:
    from datasets import Dataset
    from devinterp.slt.bif import compute_bif
    from devinterp.slt.sampling import sample

    cfg = workload.sampler
    train = Dataset.from_dict({"input_ids": workload.train_ids.tolist()}).with_format("torch")
    tracked = Dataset.from_dict({"input_ids": workload.tracked_ids.tolist()}).with_format("torch")
    batch = cfg.batch_size
    n_tracked = workload.tracked_ids.shape[0]
    if n_tracked % batch:
        raise ValueError(f"devinterp tracks batch_size × batches_per_draw rows: {n_tracked} % {batch} != 0")
    method = {"sgld": "sgmcmc_sgld", "rmsprop_sgld": "rmsprop_sgld"}[cfg.method]
    extra = {}
    if cfg.method == "rmsprop_sgld":
        extra = {"rmsprop_alpha": cfg.rmsprop_alpha, "rmsprop_eps": cfg.rmsprop_eps}
    model = workload.model.to(device)
    with tempfile.TemporaryDirectory(prefix="devinterp-bench-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        samples = sample(
            model,
            train,
            {"tracked": (tracked, n_tracked // batch)},
            lr=cfg.eps,
            n_beta=cfg.nbeta,
            localization=cfg.gamma,
            noise_level=cfg.noise_level,
            llc_weight_decay=cfg.weight_decay,
            num_chains=cfg.chains,
            num_draws=cfg.draws,
            batch_size=batch,
            num_burnin_steps=cfg.burn_in,
            num_steps_bw_draws=cfg.steps_between_draws,
            sampling_method=method,
            device=device,
            output_path=Path(tmp) / "samples.zarr",
            loss_fn=None if workload.per_token else _toy_loss(workload),
            **extra,
        )
        t1 = time.perf_counter()
        result = compute_bif(samples, correlation_method=correlation_method, device=device)
        corr = result["influences"].values  # (n, n) or (n, n, T, T), devinterp's row order
        t2 = time.perf_counter()
        theirs_ids = torch.as_tensor(result["input_ids"].values)
        traces = torch.as_tensor(samples.dataset["loss_tracked"].values)  # (chains, draws, n, T)
    order = _align(theirs_ids, workload.tracked_ids)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())  # our row i is devinterp's row inverse[i]
    inv = inverse.numpy()
    corr = corr[np.ix_(inv, inv)] if corr.ndim == 2 else corr[inv][:, inv]
    return DevinterpRun(t1 - t0, t2 - t1, traces[:, :, inverse], corr, order)

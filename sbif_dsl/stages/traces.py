"""Reading a sample stage's artifacts (what every analysis over SGLD draws takes as its input).

Heavy libraries are imported inside the functions: the spec package imports the analysis kinds' modules.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .base import Inputs

if TYPE_CHECKING:
    import torch


def read_summary(inputs: Inputs, sample_key: str) -> dict:
    return json.loads(inputs.file(sample_key, "summary.json").read_text())


def read_traces(inputs: Inputs, sample_key: str) -> dict[str, torch.Tensor]:
    """Traces of a sample stage input as {observable: (chains, draws, n[, T])}, at the dtype they were stored at
    (the study's: float64 or float32; float32 for caches before sample version 6)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

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


def read_batch_losses(inputs: Inputs, sample_key: str) -> torch.Tensor:
    """(chains, draws) minibatch losses of a sample stage input (the LLC's input)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.load(inputs.file(sample_key, "batch_losses.npy")))


def per_sample(trace: torch.Tensor) -> torch.Tensor:
    """Per-token traces (C, D, n, T) reduce to per-sequence mean loss (C, D, n)."""
    return trace.mean(dim=-1) if trace.dim() == 4 else trace


def pairs(n: int, q: int):
    """Row and column indices of every entry of an (n, q) matrix, row-major (how matrices become rows)."""
    import numpy as np

    i, j = np.indices((n, q), dtype=np.int32)
    return i.ravel(), j.ravel()


def estimate_rows(name: str, theta, se, df: int, scale: str = "raw") -> dict:
    """Columns `name`, `name_se`, `name_lo`, `name_hi` (the 95% interval on `scale`, "fisher_z" for a
    correlation: `influence/uncertainty.py`) of an estimate, flattened row-major. An estimate or SE that is
    undefined (a class without distinct token pairs; one short chain) is stored as NULL, never NaN (NaN compares as
    larger than every number in DuckDB)."""
    import pyarrow as pa
    import torch

    from ..influence.uncertainty import interval

    theta, se = torch.as_tensor(theta), torch.as_tensor(se)
    lo, hi = interval(theta, se, df, scale)

    def col(x):
        return pa.array(x.to(torch.float64).numpy().ravel(), from_pandas=True)

    return {name: col(theta), f"{name}_se": col(se), f"{name}_lo": col(lo), f"{name}_hi": col(hi)}

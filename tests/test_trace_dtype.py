"""Traces are stored at the dtype the study runs: a float64 study's losses come back bitwise (sample version 6)."""

from __future__ import annotations

import numpy as np

import sbif_dsl as sb
from sbif_dsl.stages import sample
from sbif_dsl.stages.base import Inputs
from sbif_dsl.stages.traces import read_traces
from sbif_dsl.store import Store

from .conftest import TINY_SPEC, write_spec

F64_SPEC = (
    TINY_SPEC.replace("device: cpu\n", "device: cpu\ndtype: float64\n")
    .replace("steps: [10, 30, 60]", "steps: [30]")
    .split("analyses:")[0]
    + "analyses:\n  - kind: bif\n"
)


def test_a_float64_study_stores_its_traces_bitwise(tmp_path, monkeypatch):
    """What the sampler hands the sample stage (captured at `_write_traces`) equals, bitwise and as float64, what
    `read_traces` and the `loss_traces` view read back; and float32 could not have held it (the test's teeth)."""
    handed: dict[str, np.ndarray] = {}
    write = sample._write_traces

    def capture(path, traces, *dtype):
        handed.update({k: v.copy() for k, v in traces.items()})
        return write(path, traces, *dtype)

    monkeypatch.setattr(sample, "_write_traces", capture)
    cache = tmp_path / "c" / "sbif.duckdb"
    study = sb.load(write_spec(tmp_path, F64_SPEC), cache=cache)
    study.run()
    assert set(handed) == {"train", "left"} and all(v.dtype == np.float64 for v in handed.values())
    assert any((v.astype(np.float32).astype(np.float64) != v).any() for v in handed.values())  # not float32 values

    store = Store(cache)
    with store.connect(read_only=True) as con:
        (key,) = con.execute("SELECT key FROM stages WHERE kind = 'sample'").fetchone()
    files = {key: {n: store.artifact(key, n) for n in ("traces.parquet", "summary.json")}}
    back = read_traces(Inputs(files), key)
    for name, values in handed.items():
        got = back[name].numpy()
        assert got.dtype == np.float64 and np.array_equal(got, values), name
    view = study.sql("SELECT loss FROM loss_traces WHERE observable = 'train' ORDER BY chain, draw, sample_idx")
    assert view["loss"].dtype.is_float() and np.array_equal(view["loss"].to_numpy(), handed["train"].ravel())

"""The CUDA path. Skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/test_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from sbif_dsl.sampling import SGLDConfig, run_chains
from sbif_dsl.store import Store

from .conftest import TINY_SPEC, sbif, write_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _quadratic(params, x, y):
    return 0.5 * ((x @ params["w"] - y) ** 2)  # (batch,)


def test_sampler_on_cuda_matches_cpu_statistics():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    w0 = {"w": torch.linalg.lstsq(x, y[:, None]).solution[:, 0]}
    cfg = SGLDConfig(eps=1e-3, gamma=10.0, nbeta=64.0, chains=8, draws=2000, burn_in=200)
    results = {}
    for dev in ("cpu", "cuda"):
        p0 = {k: v.to(dev) for k, v in w0.items()}
        res = run_chains(_quadratic, p0, (x.to(dev), y.to(dev)), [(x.to(dev), y.to(dev))], cfg, seed=1)
        assert res.traces[0].device.type == "cpu" and torch.isfinite(res.traces[0]).all()
        results[dev] = res.traces[0].reshape(-1, 64).mean(0)
    # different RNG streams: compare posterior means of the losses, not bits
    assert torch.allclose(results["cpu"], results["cuda"], rtol=0.1, atol=1e-3)


def test_tiny_study_runs_on_cuda(tmp_path, cache_path):
    spec = write_spec(tmp_path, TINY_SPEC.replace("device: cpu", "device: cuda"))
    sbif("run", str(spec), cache=cache_path)
    with Store(cache_path).connect(read_only=True) as con:
        devices = {r[0] for r in con.execute("SELECT DISTINCT device FROM stages").fetchall()}
        n_bif = con.execute("SELECT count(*) FROM bif WHERE bif_corr IS NOT NULL").fetchone()[0]
    assert devices == {"cuda:0"} and n_bif == 3 * 16 + 3 * 8

"""SGLD / RMSProp-SGLD over stacked chains and the LLC estimate from their minibatch losses: pure math (torch only),
no I/O, no spec knowledge.

Modules, each one job: `config` (SGLDConfig, default nβ), `update` (drift, preconditioner, sgld_step), `flat`
(parameters as one vector, compute precision), `batches` (minibatches and noise, in a fixed order), `over_chains`
(vmap or loop over chains, worker threads), `evaluation` (no-grad losses in bounded chunks), `buffers` (draws in
blocks, finiteness), `kernel` (the set-up and step shared with calibration), `chains` (run_chains and the
sampler set-up it shares with `auto`, the adaptive schedule), `screens` (convergence and geometry), `llc`, `mala`
and `diagnostics` (calibration).

The public names are imported on first use (PEP 562): `screens` and `mixing` need only numpy, and reading a
study's screens (`sbif run` of an unchanged spec) must not import torch.
"""

import importlib

_PUBLIC = {
    "ChainResult": "chains",
    "run_chains": "chains",
    "SGLDConfig": "config",
    "default_nbeta": "config",
    "llc_per_chain": "llc",
    "sgld_step": "update",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)

"""SGLD / RMSProp-SGLD over stacked chains and the LLC estimate from their minibatch losses: pure math (torch only),
no I/O, no spec knowledge.

Modules, each one job: `config` (SGLDConfig, default nβ), `update` (drift, preconditioner, sgld_step), `flat`
(parameters as one vector, compute precision), `batches` (minibatches and noise, in a fixed order), `over_chains`
(vmap or loop over chains, worker threads), `evaluation` (no-grad losses in bounded chunks), `buffers` (draws in
blocks, finiteness), `kernel` (the set-up and step shared with calibration), `chains` (run_chains), `llc`,
`mala` and `diagnostics` (calibration).
"""

from .chains import ChainResult, run_chains
from .config import SGLDConfig, default_nbeta
from .llc import llc_per_chain
from .update import sgld_step

__all__ = ["ChainResult", "SGLDConfig", "default_nbeta", "llc_per_chain", "run_chains", "sgld_step"]

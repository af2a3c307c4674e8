"""The names `sbif_dsl.sampling.sgld` exported before sampling was split into modules (docs and callers use them).

The sampler now lives in: `config` (SGLDConfig, default_nbeta), `update` (the step), `flat` (flat parameters),
`batches` (random numbers), `over_chains` (vmap or loop, worker threads), `evaluation`, `buffers`, `kernel` (the
shared set-up) and `chains` (run_chains).
"""

from .chains import ChainResult, run_chains
from .config import SGLDConfig
from .flat import FlatParams, ParamLossFn
from .update import sgld_step

__all__ = ["ChainResult", "FlatParams", "ParamLossFn", "SGLDConfig", "run_chains", "sgld_step"]

"""SGLD / RMSProp-SGLD over stacked chains and the LLC estimate from their minibatch losses."""

from .llc import default_nbeta, llc_per_chain
from .sgld import ChainResult, SGLDConfig, run_chains, sgld_step

__all__ = ["ChainResult", "SGLDConfig", "default_nbeta", "llc_per_chain", "run_chains", "sgld_step"]

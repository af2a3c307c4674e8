"""Sampler hyperparameters, named as in SCIENCE.md §2, and the field's default inverse temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class SGLDConfig:
    """Sampler hyperparameters, named as in SCIENCE.md §2; frozen, so a run is a function of it and the seed."""

    method: Literal["sgld", "rmsprop_sgld"] = "sgld"
    eps: float  # step size ε
    gamma: float  # localization γ
    nbeta: float  # inverse temperature nβ
    chains: int
    draws: int
    burn_in: int = 0
    steps_between_draws: int = 1
    batch_size: int | None = None  # None = full batch
    noise_level: float = 1.0  # σ
    weight_decay: float = 0.0  # λ
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.1
    precision: Literal["float32", "bfloat16"] = "float32"  # compute precision of the loss function's forward

    def __post_init__(self) -> None:
        """Rejects a config no run could use, at construction rather than deep inside a run."""
        if self.method not in ("sgld", "rmsprop_sgld"):
            raise ValueError(f"unknown SGLD method {self.method!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"unknown precision {self.precision!r}")
        if self.chains < 1 or self.draws < 1 or self.burn_in < 0 or self.steps_between_draws < 1:
            raise ValueError("need chains >= 1, draws >= 1, burn_in >= 0, steps_between_draws >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None (full batch)")

    @property
    def total_steps(self) -> int:
        """Steps per chain: the burn-in, then steps_between_draws steps for every draw."""
        return self.burn_in + self.draws * self.steps_between_draws


def default_nbeta(batch_size: int) -> float:
    """nβ = B / ln B, the field's default inverse temperature for minibatch size B (32 → 9.23, 1000 → 144.8).

    B <= 1 gives 1.0, the untempered posterior: ln 1 = 0 leaves B / ln B undefined, and a one-sample minibatch
    is a legitimate (if noisy) setting that should not fail for want of a temperature.
    """
    return batch_size / math.log(batch_size) if batch_size > 1 else 1.0

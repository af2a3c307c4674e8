"""The model/data contract: what user code (and every built-in) hands to the engine.

The BIF needs every example's loss at every draw, so a loss returns per-example values
`[B]` (or per-token `[B, T]`), never a summed scalar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import ContractError

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SampleSet:
    """Samples with stable, unique names; row i of inputs/targets is sample `names[i]`."""

    inputs: Tensor
    targets: Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Dataset:
    """A training set, named query sets, and the per-sample loss `loss(outputs, targets) -> [B] | [B, T]`."""

    train: SampleSet
    loss: LossFn
    queries: dict[str, SampleSet] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def sets(self) -> dict[str, SampleSet]:
        return {"train": self.train, **self.queries}


def check_dataset(ds: object, origin: str) -> Dataset:
    """Validate what a data factory returned; name the factory in every error."""
    if not isinstance(ds, Dataset):
        raise ContractError(f"{origin} must return sbif_dsl.task.Dataset, got {type(ds).__name__}")
    for set_name, s in ds.sets().items():
        if not isinstance(s, SampleSet):
            raise ContractError(f"{origin}: set {set_name!r} is {type(s).__name__}, expected SampleSet")
        n = len(s.names)
        if s.inputs.shape[0] != n or s.targets.shape[0] != n:
            raise ContractError(
                f"{origin}: set {set_name!r} has {n} names but inputs {tuple(s.inputs.shape)} "
                f"and targets {tuple(s.targets.shape)} (first dimension must equal the number of names)"
            )
        if len(set(s.names)) != n:
            raise ContractError(f"{origin}: set {set_name!r} has duplicate sample names")
    if not callable(ds.loss):
        raise ContractError(f"{origin}: Dataset.loss must be callable")
    return ds


def check_losses(losses: object, batch: int, origin: str) -> Tensor:
    """Check a per-sample loss: a float tensor of shape [B] or [B, T], finite."""
    if not isinstance(losses, Tensor):
        raise ContractError(f"{origin} returned {type(losses).__name__}, expected a Tensor of per-sample losses")
    if losses.dim() not in (1, 2) or losses.shape[0] != batch:
        raise ContractError(
            f"{origin} returned shape {tuple(losses.shape)}; expected per-sample losses [{batch}] "
            f"or per-token [{batch}, T] (not a summed scalar)"
        )
    if not losses.is_floating_point():
        raise ContractError(f"{origin} returned dtype {losses.dtype}; expected a floating dtype")
    if not torch.isfinite(losses).all():
        raise ContractError(f"{origin} returned non-finite losses at the checkpoint")
    return losses


def check_module(module: object, origin: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ContractError(f"{origin} must return a torch.nn.Module, got {type(module).__name__}")
    if not any(True for _ in module.parameters()):
        raise ContractError(f"{origin} returned a module with no parameters")
    return module

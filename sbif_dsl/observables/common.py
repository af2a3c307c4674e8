"""Fields and helpers the observable kinds share (no torch at module level)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base

MAX_NAME = 128


class DataObservable(Base):
    """An observable of a sample set of the data: one value per sample (or per token), or their mean."""

    name: str = Field(pattern=NAME_PATTERN, max_length=MAX_NAME, description="Name used by analyses and in SQL.")
    data: str = Field(
        default="train", max_length=MAX_NAME, description="'train' or the name of a query set of the data."
    )
    first: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        strict=True,
        description="Track only the first N samples of the set (default: all; e.g. a slice of the training set "
        "as the sources of a BIF).",
    )


Reduce = Literal["per_sample", "mean"]
REDUCE_DOC = (
    "per_sample: one value per sample (per token for a language model; the BIF averages a sequence's tokens), "
    "a sample x sample BIF; mean: one value per draw, the mean over every sample (and token) of the set, a BIF "
    "vector over the sources."
)


def reducer(reduce: str):
    """The trace reduction of a `reduce:` field: None (as recorded) or the mean over samples (and tokens)."""
    if reduce == "per_sample":
        return None
    return lambda trace: trace.flatten(2).mean(dim=2, keepdim=True)  # (chains, draws, 1)


def scalar_names(reduce: str) -> list[str] | None:
    return None if reduce == "per_sample" else ["mean"]


def class_view(rt):
    """(outputs, targets) -> (logits [..., V], labels [...]) for the data's classification outputs: a language
    model's position s predicts token s+1 (as its loss), other data compare outputs [B, V] with integer targets."""
    from ..errors import ContractError
    from ..models.transformer import next_token_loss

    shifted = rt.dataset.loss is next_token_loss

    def view(outputs, targets):
        if shifted:
            outputs, targets = outputs[:, :-1], targets[:, 1:]
        if targets.is_floating_point() or outputs.dim() != targets.dim() + 1 or outputs.shape[:-1] != targets.shape:
            raise ContractError(
                f"this observable needs class logits [B, V] (or [B, T, V]) and integer targets; the model gave "
                f"outputs {tuple(outputs.shape)} for targets {tuple(targets.shape)} {targets.dtype}"
            )
        return outputs, targets

    return view

"""`induction_score`: prefix-matching attention of a chosen head (or the max over heads) on the repeated-block
probe of the `induction_score` analysis (SCIENCE.md §6), recorded at every draw.

The probe is the analysis' own (same seed, token pool and lengths), so at w* the observable with the defaults
equals that analysis' score. The score is a function of the parameters (attention patterns), not of a data set's
outputs: one extra forward pass over the probe per draw.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..keyed import NAME_PATTERN, Base
from .kind import Measure, ObservableKind


class InductionScoreObservable(Base):
    """Induction score of a layer/head (default: max over all heads) at every SGLD draw; one value per draw."""

    KEYED = ("kind", "name", "layer", "head", "seq_len", "n_seqs")
    UNKEYED = ()

    kind: Literal["induction_score"] = Field(description="Prefix-matching attention score on repeated blocks.")
    name: str = Field(pattern=NAME_PATTERN, max_length=128, description="Name used by analyses and in SQL.")
    layer: int | None = Field(
        default=None, ge=0, le=63, strict=True, description="Layer (0-based; default: the max over every layer)."
    )
    head: int | None = Field(
        default=None, ge=0, le=127, strict=True, description="Head of that layer (default: the max over its heads)."
    )
    seq_len: int | None = Field(
        default=None, ge=4, le=65536, strict=True, description="Two copies of a block (default: the context)."
    )
    n_seqs: int = Field(default=32, ge=1, le=4096, strict=True, description="Random probe sequences.")

    @property
    def data(self) -> None:
        """No data set: the probe is its own batch."""
        return None

    @model_validator(mode="after")
    def _head_needs_layer(self) -> InductionScoreObservable:
        if self.head is not None and self.layer is None:
            raise ValueError("head needs a layer")
        return self


def probe_key(rt, spec: InductionScoreObservable) -> dict:
    return {"probe_seed": rt.study.seed}  # the probe's tokens (its token pool is in the dataset key)


def measure(rt, spec: InductionScoreObservable) -> Measure:
    import torch

    from ..errors import UsageError
    from ..tokens.induction import repeated_block_tokens

    m = rt.study.model
    if m.kind != "transformer":
        raise UsageError(f"observable {spec.name!r}: induction_score needs the built-in transformer, not {m.kind!r}")
    if spec.layer is not None and spec.layer >= m.n_layers:
        raise UsageError(f"observable {spec.name!r}: layer {spec.layer} of a {m.n_layers}-layer model")
    if spec.head is not None and spec.head >= m.n_heads:
        raise UsageError(f"observable {spec.name!r}: head {spec.head} of a {m.n_heads}-head model")
    context = rt.dataset.train.inputs.shape[1]
    pool = rt.dataset.meta.get("induction_token_pool") or torch.unique(rt.dataset.train.inputs).tolist()
    tokens = repeated_block_tokens(spec.seq_len or context, spec.n_seqs, rt.tokenizer.vocab_size, rt.study.seed, pool)
    block = tokens.shape[1] // 2
    layers, heads = m.n_layers, m.n_heads

    def per_head(forward, x, y):
        """(B, layers·heads): each probe sequence's prefix-matching attention, per head."""
        _, attn = forward(x, return_attn=True)  # (layers, B, heads, T, T)
        j = torch.arange(block, device=attn.device)
        score = attn[..., block + j, j + 1].mean(dim=-1)  # (layers, B, heads)
        return score.transpose(0, 1).reshape(x.shape[0], layers * heads)

    def reduce(trace):
        """(chains, draws, n, layers·heads) -> (chains, draws, 1): mean over the probe, then the chosen head."""
        s = trace.mean(dim=2).reshape(*trace.shape[:2], layers, heads)
        if spec.layer is not None:
            s = s[:, :, spec.layer : spec.layer + 1]
        if spec.head is not None:
            s = s[..., spec.head : spec.head + 1]
        return s.flatten(2).amax(dim=2, keepdim=True)

    return Measure(on_params=per_head, inputs=(tokens, tokens), reduce=reduce, names=["score"])


KIND = ObservableKind(
    "induction_score", InductionScoreObservable, "sbif_dsl.observables.induction_score:measure", key=probe_key
)

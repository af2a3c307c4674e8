"""A small decoder-only transformer, the model of the induction-head stage literature.

Written so that SGLD can run many chains at once: the forward pass is a pure function of the
parameters (no buffers, no in-place updates, no data-dependent Python branches), so
`torch.func.functional_call` + `torch.func.vmap` over stacked parameters works unchanged.

Loss convention (used everywhere in the project): `next_token_loss(logits, tokens)` returns
`[B, T-1]`; loss position `s` is the cross-entropy of predicting token `tokens[:, s+1]` from
`tokens[:, :s+1]`, and it is attributed to the PREDICTED token `t_{s+1}`. A language-model
`Dataset` therefore uses the token tensor itself as both inputs and targets.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Positions = Literal["learned", "shortformer"]

# Under vmap, PyTorch runs fused attention through a per-chain fallback and warns on every call;
# it is still faster than explicit attention on CPU (measured), so the warning is only noise.
warnings.filterwarnings(
    "ignore",
    message=r"There is a performance drop because we have not yet implemented the batching rule "
    r"for aten::_scaled_dot_product",
)


def next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per-token cross-entropy `[B, T-1]`: position s predicts tokens[:, s+1] and is attributed to it."""
    vocab = logits.shape[-1]
    pred = logits[:, :-1, :]  # (B, T-1, V)
    target = tokens[:, 1:]  # (B, T-1)
    loss = F.cross_entropy(pred.reshape(-1, vocab), target.reshape(-1), reduction="none")  # (B*(T-1),)
    return loss.reshape(target.shape)  # (B, T-1)


def _causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Fused causal attention. Under CPU autocast it runs in float32: the CPU flash kernel's bfloat16 backward
    is 4-16× slower than its float32 one while its forward gains nothing (benchmarks/README.md)."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class _Block(nn.Module):
    """One residual block: (LayerNorm →) causal multi-head attention, optionally (LayerNorm →) MLP."""

    def __init__(self, n_heads: int, d_model: int, d_head: int, mlp: bool, d_mlp: int, layer_norm: bool):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.ln_attn = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.W_qk = nn.Linear(d_model, 2 * n_heads * d_head, bias=False)
        self.W_v = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_o = nn.Linear(n_heads * d_head, d_model, bias=False)
        self.mlp: nn.Module | None = None
        if mlp:
            self.ln_mlp = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
            self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def _qkv(self, x: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        h = self.ln_attn(x)  # (B, T, d_model)
        # Shortformer: positions enter queries and keys only, never values or the residual stream.
        qk_in = h if pos is None else h + pos  # (B, T, d_model)
        q, k = self.W_qk(qk_in).split(self.n_heads * self.d_head, dim=-1)  # 2 × (B, T, H*d_head)
        v = self.W_v(h)  # (B, T, H*d_head)
        heads = (B, T, self.n_heads, self.d_head)
        return tuple(t.reshape(heads).transpose(1, 2) for t in (q, k, v))  # 3 × (B, H, T, d_head)

    def forward(self, x: Tensor, pos: Tensor | None, return_attn: bool) -> tuple[Tensor, Tensor | None]:
        B, T, _ = x.shape
        q, k, v = self._qkv(x, pos)  # 3 × (B, H, T, d_head)
        attn = None
        if return_attn:
            # Explicit softmax(QKᵀ/√d) so the pattern can be inspected (induction score).
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_head)  # (B, H, T, T)
            attn = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (B, H, T, T)
            z = attn @ v  # (B, H, T, d_head)
        else:
            z = _causal_attention(q, k, v)  # (B, H, T, d_head)
        z = z.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head)  # (B, T, H*d_head)
        x = x + self.W_o(z)  # (B, T, d_model)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_mlp(x))  # (B, T, d_model)
        return x, attn


class Transformer(nn.Module):
    """Decoder-only transformer: tokens `[B, T]` (int64) → logits `[B, T, vocab]`.

    `mlp=False` gives the attention-only model in which induction heads form as a clean stage.
    `positions="shortformer"` adds position embeddings to the query/key inputs of every layer
    only (Press et al. 2021), which the induction-head literature uses to make the previous-token
    head easy to learn; `"learned"` adds them to the residual stream (GPT-2 style).
    """

    def __init__(
        self,
        vocab_size: int,
        n_layers: int = 2,
        n_heads: int = 4,
        d_model: int = 64,
        d_head: int | None = None,
        context: int = 64,
        mlp: bool = False,
        d_mlp: int | None = None,
        positions: Positions = "shortformer",
        layer_norm: bool = True,
        init_std: float = 0.02,
    ):
        super().__init__()
        if positions not in ("learned", "shortformer"):
            raise ValueError(f"positions must be 'learned' or 'shortformer', got {positions!r}")
        for name, value in (
            ("vocab_size", vocab_size),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("d_model", d_model),
            ("context", context),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        d_head = d_head if d_head is not None else max(1, d_model // n_heads)
        d_mlp = d_mlp if d_mlp is not None else 4 * d_model
        self.vocab_size, self.context, self.positions = vocab_size, context, positions
        self.n_layers, self.n_heads = n_layers, n_heads
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Parameter(torch.zeros(context, d_model))  # (context, d_model)
        self.blocks = nn.ModuleList(_Block(n_heads, d_model, d_head, mlp, d_mlp, layer_norm) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        """GPT-2 style: N(0, std) weights, residual outputs scaled by 1/√(2·layers), zero biases."""
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # LayerNorm / biases keep their defaults (1 and 0)
            scale = 1 / math.sqrt(2 * self.n_layers) if name.endswith(("W_o.weight", "mlp.2.weight")) else 1
            nn.init.normal_(p, mean=0.0, std=std * scale)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def _run(self, tokens: Tensor, return_attn: bool) -> tuple[Tensor, Tensor | None]:
        T = tokens.shape[-1]
        if T > self.context:
            raise ValueError(f"sequence length {T} exceeds the model context {self.context}")
        pos = self.pos_embed[:T]  # (T, d_model)
        x = self.embed(tokens)  # (B, T, d_model)
        if self.positions == "learned":
            x = x + pos
        qk_pos = pos if self.positions == "shortformer" else None
        patterns = []
        for block in self.blocks:
            x, attn = block(x, qk_pos, return_attn)  # (B, T, d_model), (B, H, T, T) | None
            patterns.append(attn)
        logits = self.unembed(self.ln_final(x))  # (B, T, V)
        return logits, (torch.stack(patterns) if return_attn else None)  # (L, B, H, T, T)

    def forward(self, tokens: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits `[B, T, V]`; with `return_attn=True` also the patterns `[layers, B, heads, T, T]`."""
        logits, attn = self._run(tokens, return_attn)
        return (logits, attn) if return_attn else logits

    @torch.no_grad()
    def attention_patterns(self, tokens: Tensor) -> Tensor:
        """Attention probabilities `[layers, B, heads, T, T]` (row = query, column = key), explicit."""
        return self._run(tokens, return_attn=True)[1]

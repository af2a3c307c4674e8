"""Induction score of a checkpoint: how much a model copies from the previous occurrence of a prefix.

On sequences made of a random block repeated twice, an induction head attends from each token
of the second copy to the token right after that token's earlier occurrence (prefix matching)
and so predicts the second copy almost for free. We report both signals: the attention score
(max over heads) and the loss on the second copy vs the first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..models.transformer import next_token_loss


def repeated_block_tokens(
    seq_len: int, n_seqs: int, vocab_size: int, seed: int, token_pool: Sequence[int] | None = None
) -> Tensor:
    """`[n_seqs, 2·(seq_len//2)]`: a random block of seq_len//2 tokens, then the same block again.

    Tokens come from `token_pool` (default: all of range(vocab_size)), without replacement when
    the pool is large enough, so every prefix has exactly one earlier occurrence.
    """
    block = seq_len // 2
    if block < 2:
        raise ValueError(f"seq_len must be at least 4, got {seq_len}")
    pool = torch.as_tensor(list(token_pool) if token_pool is not None else range(vocab_size), dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    if pool.numel() >= block:
        idx = torch.stack([torch.randperm(pool.numel(), generator=g)[:block] for _ in range(n_seqs)])  # (n, block)
    else:
        idx = torch.randint(0, pool.numel(), (n_seqs, block), generator=g)  # (n, block)
    first = pool[idx]  # (n, block)
    return torch.cat([first, first], dim=1)  # (n, 2·block)


def score_from_attention(attn: Tensor, block: int) -> Tensor:
    """Per-head prefix-matching score `[layers, heads]` from patterns `[layers, B, heads, T, T]`.

    For query position i = block + j in the second copy, the target key is j + 1: the token
    right after the earlier occurrence of token i.
    """
    j = torch.arange(block, device=attn.device)  # (block,)
    target = attn[..., block + j, j + 1]  # (layers, B, heads, block)
    return target.mean(dim=(1, 3))  # (layers, heads)


@torch.no_grad()
def induction_score(
    model: nn.Module,
    seq_len: int,
    n_seqs: int,
    vocab_size: int,
    seed: int = 0,
    token_pool: Sequence[int] | None = None,
) -> dict:
    """Induction score of `model` on repeated random blocks of total length `seq_len` (≤ model context).

    Returns `score` (max over heads of the prefix-matching attention), `per_head`
    `[layers, heads]`, and the mean next-token loss on the first vs the second copy
    (`loss_first_copy`, `loss_second_copy`; positions predicting the first token of each copy
    are excluded, since no prefix predicts them). The model must offer `attention_patterns`.
    For byte-level models pass `token_pool` (e.g. the letters seen in training): bytes never
    seen in training have untrained embeddings and understate the score.
    """
    if not hasattr(model, "attention_patterns"):
        raise TypeError(f"{type(model).__name__} has no attention_patterns(tokens); cannot compute the score")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        tokens = repeated_block_tokens(seq_len, n_seqs, vocab_size, seed, token_pool).to(device)  # (n, 2·block)
        block = tokens.shape[1] // 2
        attn = model.attention_patterns(tokens)  # (layers, n, heads, T, T)
        per_head = score_from_attention(attn, block)  # (layers, heads)
        loss = next_token_loss(model(tokens), tokens)  # (n, T-1); position s predicts token s+1
    finally:
        model.train(was_training)
    return {
        "score": float(per_head.max()),
        "per_head": per_head.cpu(),
        "loss_first_copy": float(loss[:, : block - 1].mean()),  # predicted tokens 1..block-1
        "loss_second_copy": float(loss[:, block:].mean()),  # predicted tokens block+1..2·block-1
    }

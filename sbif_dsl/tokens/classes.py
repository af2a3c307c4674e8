"""Token classes: named boolean masks over the loss positions of a token tensor.

Per-token influence is aggregated over classes (SCIENCE.md §1), so each class is a mask aligned
with the per-token loss `[n, T-1]`. Attribution convention (the same as `next_token_loss`):
loss position s predicts token s+1, and a class rule decides about that PREDICTED token t_{s+1}
(looking at its left context t_0..t_s where a rule needs it). Token 0 of a window is never
predicted, so no class ever contains it.

Every rule maps tokens `[n, T]` to a token-aligned mask `[n, T]`; `class_masks` drops column 0.
Classes may overlap; tokens no rule claims form the remainder class (default "other").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from .tokenizer import Tokenizer

TokenPredicate = Callable[[Tensor], Tensor]


class Rule(Protocol):
    def token_mask(self, tokens: Tensor, tokenizer: Tokenizer | None) -> Tensor:
        """Bool `[n, T]`: True where token (n, k) belongs to the class."""
        ...


@dataclass(frozen=True)
class Induction:
    """Token k whose bigram (t_{k-1}, t_k) occurred earlier in the window: induction can copy it."""

    def token_mask(self, tokens: Tensor, tokenizer: Tokenizer | None = None) -> Tensor:
        n, T = tokens.shape
        mask = torch.zeros(n, T, dtype=torch.bool, device=tokens.device)  # (n, T)
        if T < 2:
            return mask
        v = int(tokens.max()) + 1
        code = tokens[:, :-1] * v + tokens[:, 1:]  # (n, T-1): bigram ending at token k = 1..T-1
        key = code + torch.arange(n, device=tokens.device).unsqueeze(1) * (v * v)  # (n, T-1), unique per row
        flat = key.reshape(-1)  # (n·(T-1),)
        order = torch.sort(flat, stable=True).indices  # equal keys keep their left-to-right order
        sorted_keys = flat[order]
        repeat = torch.zeros_like(flat, dtype=torch.bool)
        repeat[order[1:]] = sorted_keys[1:] == sorted_keys[:-1]  # not the first occurrence in its row
        mask[:, 1:] = repeat.reshape(n, T - 1)
        return mask


@dataclass(frozen=True)
class Regex:
    """Tokens whose text matches `pattern` (Python `re`), searched from the token's first character.

    The previous token's text is placed before the token, so lookbehinds see the left context:
    `(?<![A-Za-z])[A-Za-z]` is "a letter preceded by a non-letter" even at a token boundary.
    `mode` is `search` (anywhere in the token), `match` (at its start) or `fullmatch` (all of it).
    """

    pattern: str
    mode: Literal["search", "match", "fullmatch"] = "search"
    _compiled: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.mode not in ("search", "match", "fullmatch"):
            raise ValueError(f"Regex mode must be search, match or fullmatch, got {self.mode!r}")
        try:
            object.__setattr__(self, "_compiled", re.compile(self.pattern))
        except re.error as e:
            raise ValueError(f"invalid regex {self.pattern!r}: {e}") from None

    def _hit(self, prev: str, cur: str) -> bool:
        method = getattr(self._compiled, self.mode)
        return method(prev + cur, len(prev)) is not None

    def token_mask(self, tokens: Tensor, tokenizer: Tokenizer | None) -> Tensor:
        if tokenizer is None:
            raise ValueError("a Regex token class needs a tokenizer to turn token ids into text")
        n, T = tokens.shape
        prev = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], dim=1)  # (n, T); -1 = none
        pairs = torch.stack([prev.reshape(-1), tokens.reshape(-1)], dim=1)  # (n·T, 2)
        uniq, inverse = torch.unique(pairs, dim=0, return_inverse=True)  # evaluate each (prev, cur) once
        text: dict[int, str] = {}

        def text_of(i: int) -> str:
            if i not in text:
                text[i] = "" if i < 0 else tokenizer.token_text(i)
            return text[i]

        hits = torch.tensor([self._hit(text_of(p), text_of(c)) for p, c in uniq.tolist()], dtype=torch.bool)
        return hits.to(tokens.device)[inverse].reshape(n, T)  # (n, T)


@dataclass(frozen=True)
class TokenIds:
    """Tokens whose id is in `ids`."""

    ids: tuple[int, ...]

    def token_mask(self, tokens: Tensor, tokenizer: Tokenizer | None = None) -> Tensor:
        ids = torch.tensor(sorted(set(self.ids)), dtype=tokens.dtype, device=tokens.device)
        return torch.isin(tokens, ids)  # (n, T)


@dataclass(frozen=True)
class Positions:
    """Tokens at the given window positions k (1..T-1; negative counts from the end, as in Python)."""

    positions: tuple[int, ...]

    def token_mask(self, tokens: Tensor, tokenizer: Tokenizer | None = None) -> Tensor:
        n, T = tokens.shape
        mask = torch.zeros(n, T, dtype=torch.bool, device=tokens.device)  # (n, T)
        for k in self.positions:
            if not -T <= k < T:
                raise ValueError(f"position {k} is outside windows of length {T}")
            mask[:, k] = True
        return mask


@dataclass(frozen=True)
class Predicate:
    """A Python callable `tokens [n, T] -> bool [n, T]` (token-aligned, like every rule)."""

    fn: TokenPredicate

    def token_mask(self, tokens: Tensor, tokenizer: Tokenizer | None = None) -> Tensor:
        out = self.fn(tokens)
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        if not isinstance(out, Tensor) or out.shape != tokens.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"token predicate {name} returned {got}; expected a mask {tuple(tokens.shape)}")
        return out.to(torch.bool)


_LETTER = "A-Za-z"
STRUCTURAL_DEFAULT: dict[str, Rule] = {
    "delimiters": Regex(r"[\[\](){}\"']"),
    "formatting": Regex(r"\s"),  # space, newline, indentation
    "punctuation": Regex(r"[!#$%&*+,\-./:;<=>?@\\^_`|~]"),  # ASCII punctuation except delimiters
    "digits": Regex(r"[0-9]"),
    "word_start": Regex(rf"(?<![{_LETTER}])[{_LETTER}]"),  # a letter preceded by a non-letter
    "word_continuation": Regex(rf"(?<=[{_LETTER}])[{_LETTER}]", mode="match"),  # starts inside a word
}
"""Structural classes of the token-class literature; with `Induction()` they make the usual study set."""


def _as_rule(rule: Rule | TokenPredicate) -> Rule:
    """A bare callable is a `Predicate`."""
    if hasattr(rule, "token_mask"):
        return rule
    if callable(rule):
        return Predicate(rule)
    raise TypeError(f"a token class rule must have token_mask() or be callable, got {type(rule).__name__}")


def class_masks(
    tokens: Tensor,
    rules: Mapping[str, Rule | TokenPredicate],
    tokenizer: Tokenizer | None = None,
    remainder: str | None = "other",
) -> tuple[list[str], Tensor]:
    """Names and masks `[n_classes, n, T-1]` aligned with `next_token_loss` positions.

    Mask [c, i, s] is True when token s+1 of window i (the token loss position s predicts) is in
    class c. The remainder class (last, unless `remainder=None`) holds tokens no rule claims.
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [n, T] with T >= 2, got {tuple(tokens.shape)}")
    if remainder is not None and remainder in rules:
        raise ValueError(f"remainder class name {remainder!r} is also a rule name")
    names = list(rules)
    masks = [_as_rule(rules[name]).token_mask(tokens, tokenizer)[:, 1:] for name in names]  # each (n, T-1)
    if remainder is not None:
        claimed = torch.stack(masks).any(dim=0) if masks else torch.zeros_like(tokens[:, 1:], dtype=torch.bool)
        masks.append(~claimed)  # (n, T-1)
        names.append(remainder)
    return names, torch.stack(masks)  # (n_classes, n, T-1)

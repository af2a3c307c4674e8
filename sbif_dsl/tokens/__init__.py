"""Tokenizers, token-class rules and the induction score: the token-level part of the zoo."""

from .classes import (
    STRUCTURAL_DEFAULT,
    Induction,
    Positions,
    Predicate,
    Regex,
    Rule,
    TokenIds,
    class_masks,
)
from .induction import induction_score, repeated_block_tokens, score_from_attention
from .tokenizer import ByteTokenizer, HFTokenizerFile, Tokenizer

__all__ = [
    "STRUCTURAL_DEFAULT",
    "ByteTokenizer",
    "HFTokenizerFile",
    "Induction",
    "Positions",
    "Predicate",
    "Regex",
    "Rule",
    "TokenIds",
    "Tokenizer",
    "class_masks",
    "induction_score",
    "repeated_block_tokens",
    "score_from_attention",
]

"""A seeded synthetic language for studying induction heads, and windows of local text files.

Why this language looks the way it does: a small attention-only model trained on text where
repeated spans are rare (Zipfian words with a few percent of repeats) never formed induction
heads within 8,000 steps, while the same model trained on windows that EACH hold a random span
repeated at a random offset formed them abruptly within ~2,000 steps. So every window (by
default) carries one span of random characters -- unpredictable from unigram statistics on its
first occurrence, perfectly predictable by copying on the second -- embedded in text that keeps
the structure token classes look at: Zipfian words, punctuation, nested brackets and quotes,
numbers, newlines and indentation.

All text is ASCII, so with the byte tokenizer one character is one token.
"""

from __future__ import annotations

import glob
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..models.transformer import next_token_loss
from ..task import Dataset, SampleSet
from ..tokens.tokenizer import ByteTokenizer, Tokenizer

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_PAIRS = ("()", "[]", "{}", '""', "''")
_SENTENCE_END = (". ", ". ", ". ", "! ", "? ", ".\n")
_INNER_PUNCT = (", ", ", ", "; ", ": ", " - ")
_OPERATORS = (" = ", " + ", " * ", " == ", " < ")
_DEFAULT_SPAN_ALPHABET = string.ascii_letters


@dataclass(frozen=True)
class SyntheticWindow:
    """One window of text and where its repeated span sits (span_len 0 when the window has none)."""

    text: str
    span_start: int
    repeat_start: int
    span_len: int


def _lexicon(rng: np.random.Generator, n_words: int) -> list[str]:
    """Distinct pronounceable pseudo-words; shorter words get the frequent (low) ranks, as in real text."""
    words: set[str] = set()
    while len(words) < n_words:
        n_syl = int(rng.choice([1, 1, 2, 2, 2, 3, 3, 4]))
        w = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(n_syl))
        if rng.random() < 0.3:
            w += rng.choice(list(_CONSONANTS))
        words.add(w)
    return sorted(words, key=lambda w: (len(w), w))


class _TextStream:
    """Draws structured text: prose sentences and code-like lines, chosen per segment."""

    def __init__(
        self,
        rng: np.random.Generator,
        lexicon: list[str],
        zipf_exponent: float,
        p_code: float,
        p_delimiter: float,
        p_number: float,
        max_depth: int,
    ):
        self.rng, self.lexicon = rng, lexicon
        ranks = np.arange(1, len(lexicon) + 1, dtype=np.float64)
        p = ranks ** (-zipf_exponent)
        self.cdf = np.cumsum(p / p.sum())
        self.p_code, self.p_delimiter, self.p_number, self.max_depth = (
            p_code,
            p_delimiter,
            p_number,
            max_depth,
        )
        self.indent = 0

    def word(self) -> str:
        i = int(np.searchsorted(self.cdf, self.rng.random(), side="right"))
        return self.lexicon[min(i, len(self.lexicon) - 1)]

    def number(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return str(int(self.rng.integers(0, 100)))
        if r < 0.8:
            return str(int(self.rng.integers(100, 10000)))
        return f"{int(self.rng.integers(0, 100))}.{int(self.rng.integers(0, 100)):02d}"

    def atom(self, depth: int) -> str:
        """A word, a number, or a (possibly nested) delimited group."""
        r = self.rng.random()
        if r < self.p_number:
            return self.number()
        if r < self.p_number + self.p_delimiter and depth < self.max_depth:
            open_, close = _PAIRS[int(self.rng.integers(len(_PAIRS)))]
            n = int(self.rng.integers(1, 4))
            sep = ", " if open_ in "[{" else " "
            return open_ + sep.join(self.atom(depth + 1) for _ in range(n)) + close
        return self.word()

    def sentence(self) -> str:
        n = int(self.rng.integers(3, 10))
        parts = [self.atom(0) for _ in range(n)]
        text = parts[0][:1].upper() + parts[0][1:]
        for p in parts[1:]:
            text += _INNER_PUNCT[int(self.rng.integers(len(_INNER_PUNCT)))] if self.rng.random() < 0.15 else " "
            text += p
        return text + _SENTENCE_END[int(self.rng.integers(len(_SENTENCE_END)))]

    def code_line(self) -> str:
        """`name = f(args)` style lines; a trailing ':' opens an indented block, blocks close at random."""
        r = self.rng.random()
        if r < 0.25 and self.indent < 3:
            line = f"{self.word()} {self.word()}({self.atom(1)}):"
            out = "    " * self.indent + line + "\n"
            self.indent += 1
            return out
        lhs = self.word() if self.rng.random() < 0.7 else f"{self.word()}[{self.number()}]"
        rhs = self.atom(0)
        if self.rng.random() < 0.5:
            rhs = f"{self.word()}({rhs}, {self.atom(1)})"
        op = _OPERATORS[0] if self.rng.random() < 0.7 else _OPERATORS[int(self.rng.integers(len(_OPERATORS)))]
        out = "    " * self.indent + lhs + op + rhs + "\n"
        if self.indent > 0 and self.rng.random() < 0.3:
            self.indent -= 1
        return out

    def text(self, n_chars: int) -> str:
        parts: list[str] = []
        total = 0
        while total < n_chars:
            if self.rng.random() < self.p_code:
                seg = self.code_line()
            else:
                self.indent = 0
                seg = self.sentence()
            parts.append(seg)
            total += len(seg)
        return "".join(parts)


def generate_windows(
    n_sequences: int,
    context: int = 64,
    seed: int = 0,
    *,
    vocab_words: int = 400,
    zipf_exponent: float = 1.1,
    repeat_fraction: float = 1.0,
    span_len: tuple[int, int] = (8, 20),
    span_alphabet: str = _DEFAULT_SPAN_ALPHABET,
    min_gap: int = 1,
    p_code: float = 0.3,
    p_delimiter: float = 0.12,
    p_number: float = 0.08,
    max_depth: int = 3,
) -> list[SyntheticWindow]:
    """Windows of exactly `context` ASCII characters; a `repeat_fraction` of them hold a span repeated once.

    The span is `span_len` (inclusive range) characters drawn uniformly from `span_alphabet`,
    written at a random `span_start` and again at a random later `repeat_start` (at least
    `min_gap` characters after the first copy ends); the surrounding text flows around them.
    Same arguments, same windows.
    """
    lo, hi = span_len
    if not 1 <= lo <= hi:
        raise ValueError(f"span_len must be (min, max) with 1 <= min <= max, got {span_len}")
    if 2 * hi + min_gap > context:
        raise ValueError(f"two spans of up to {hi} chars plus a gap of {min_gap} do not fit in context {context}")
    if not 0.0 <= repeat_fraction <= 1.0:
        raise ValueError(f"repeat_fraction must be in [0, 1], got {repeat_fraction}")
    if not span_alphabet or not span_alphabet.isascii():
        raise ValueError("span_alphabet must be a non-empty ASCII string")
    lexicon = _lexicon(np.random.default_rng([seed, 0]), vocab_words)  # one lexicon per seed, shared by splits
    rng = np.random.default_rng([seed, 1])
    stream = _TextStream(rng, lexicon, zipf_exponent, p_code, p_delimiter, p_number, max_depth)
    alphabet = np.array(list(span_alphabet))
    windows = []
    for _ in range(n_sequences):
        start = int(rng.integers(0, context // 2 + 1))  # windows begin mid-text, not always at a segment
        base = stream.text(context + start)[start:]
        if rng.random() >= repeat_fraction:
            windows.append(SyntheticWindow(base[:context], 0, 0, 0))
            continue
        n = int(rng.integers(lo, hi + 1))
        span = "".join(rng.choice(alphabet, size=n))
        a = int(rng.integers(0, context - 2 * n - min_gap + 1))
        b = int(rng.integers(a + n + min_gap, context - n + 1))
        between = b - a - n
        text = base[:a] + span + base[a : a + between] + span + base[a + between :]
        windows.append(SyntheticWindow(text[:context], a, b, n))
    return windows


def generate_synthetic_language(n_sequences: int, context: int = 64, seed: int = 0, **kwargs) -> list[str]:
    """The texts of `generate_windows` (same arguments): `n_sequences` strings of `context` characters."""
    return [w.text for w in generate_windows(n_sequences, context, seed, **kwargs)]


def _names(n: int) -> list[str]:
    width = max(4, len(str(max(n - 1, 0))))
    return [f"seq{i:0{width}d}" for i in range(n)]


def _token_set(rows: list[list[int]]) -> SampleSet:
    tokens = torch.tensor(rows, dtype=torch.int64)  # (n, context)
    return SampleSet(inputs=tokens, targets=tokens, names=_names(len(rows)))


def make_language_dataset(
    n_train: int = 4096,
    n_query: int = 64,
    context: int = 64,
    seed: int = 0,
    **language_kwargs,
) -> Dataset:
    """Byte-tokenized synthetic language: train windows and a held-out "query" set, each `[n, context]`.

    Inputs and targets are the same token tensor; the loss is `next_token_loss` (per token,
    `[B, context-1]`, position s attributed to the predicted token s+1). Query windows come from
    a different seed stream but share the lexicon, so they are held-out text of the same language.
    """
    tok = ByteTokenizer()
    all_windows = generate_windows(n_train + n_query, context, seed, **language_kwargs)
    rows = [tok.encode(w.text) for w in all_windows]
    spans = [(w.span_start, w.repeat_start, w.span_len) for w in all_windows]
    queries = {"query": _token_set(rows[n_train:])} if n_query > 0 else {}
    meta = {
        "kind": "synthetic_language",
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "context": context,
        "seed": seed,
        "spans": {"train": spans[:n_train], "query": spans[n_train:]},
        # The probe for `induction_score`: spans are built from these tokens only, so the heads learn to
        # copy them; probing with every seen token (spaces, brackets) understates the score ~2x.
        "induction_token_pool": tok.encode(language_kwargs.get("span_alphabet", _DEFAULT_SPAN_ALPHABET)),
        "loss_positions": "position s predicts token s+1 and is attributed to it",
    }
    return Dataset(train=_token_set(rows[:n_train]), loss=next_token_loss, queries=queries, meta=meta)


def _expand(paths_or_globs: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [paths_or_globs] if isinstance(paths_or_globs, (str, Path)) else list(paths_or_globs)
    files: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(str(item), recursive=True))
        if not matches:
            raise FileNotFoundError(f"no local text file matches {str(item)!r}")
        files.extend(Path(m) for m in matches if Path(m).is_file())
    if not files:
        raise FileNotFoundError(f"no regular files among {[str(i) for i in items]}")
    return files


def _windows(ids: Tensor, context: int, stride: int) -> Tensor:
    if ids.numel() < context:
        return torch.empty(0, context, dtype=torch.int64)
    return ids.unfold(0, context, stride).clone()  # (n_windows, context)


def text_files_dataset(
    paths_or_globs: str | Path | Sequence[str | Path],
    context: int,
    stride: int | None = None,
    tokenizer: Tokenizer | None = None,
    *,
    query_fraction: float = 0.0,
    separator: str = "\n",
    max_windows: int | None = None,
) -> Dataset:
    """Windows of `context` tokens over LOCAL text files (sorted glob order), joined by `separator`.

    The token stream is split before windowing: the last `query_fraction` of tokens becomes the
    "query" set, so train and query windows never overlap even when `stride < context`.
    """
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    stride = stride if stride is not None else context
    if context < 2 or stride < 1:
        raise ValueError(f"need context >= 2 and stride >= 1, got context={context}, stride={stride}")
    if not 0.0 <= query_fraction < 1.0:
        raise ValueError(f"query_fraction must be in [0, 1), got {query_fraction}")
    files = _expand(paths_or_globs)
    text = separator.join(f.read_text(encoding="utf-8") for f in files)
    ids = torch.tensor(tok.encode(text), dtype=torch.int64)  # (n_tokens,)
    n_query_tokens = int(round(query_fraction * ids.numel()))
    split = ids.numel() - n_query_tokens
    train = _windows(ids[:split], context, stride)  # (n_train, context)
    query = _windows(ids[split:], context, stride) if n_query_tokens else None  # (n_query, context)
    if max_windows is not None:
        train = train[:max_windows]
    if train.shape[0] == 0:
        raise ValueError(f"the text files hold {split} training tokens, fewer than one window of {context}")
    queries = {}
    if query is not None and query.shape[0] > 0:
        queries["query"] = SampleSet(inputs=query, targets=query, names=_names(query.shape[0]))
    meta = {
        "kind": "text_files",
        "files": [str(f) for f in files],
        "tokenizer": getattr(tok, "name", type(tok).__name__),
        "vocab_size": tok.vocab_size,
        "context": context,
        "stride": stride,
    }
    return Dataset(
        train=SampleSet(train, train, _names(train.shape[0])),
        loss=next_token_loss,
        queries=queries,
        meta=meta,
    )

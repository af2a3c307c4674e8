"""Tokenizers: a built-in byte-level one (no files, no downloads) and a local Hugging Face file.

Every tokenizer offers the same four things the rest of the zoo needs: `encode`, `decode`,
`token_text(id)` (the text one token stands for, used for display and by regex token classes)
and `vocab_size`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

REPLACEMENT = "\ufffd"


@runtime_checkable
class Tokenizer(Protocol):
    """What models, datasets and token classes rely on."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_text(self, token_id: int) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus optional special tokens numbered from 256.

    Byte level keeps the synthetic language and its token classes exact: one character of ASCII
    text is one token, so class rules and induction are about characters.
    """

    name = "byte"

    def __init__(self, special_tokens: Sequence[str] = ()):
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"duplicate special tokens: {list(special_tokens)}")
        self.special_tokens = list(special_tokens)
        self.special_ids = {s: 256 + i for i, s in enumerate(self.special_tokens)}

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.special_tokens)

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes; special-token strings inside `text` are NOT parsed (use `special_ids`)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of `encode`; special ids decode to their names, invalid UTF-8 to U+FFFD."""
        out: list[str] = []
        buf = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            out.append(self._special_name(i))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def token_text(self, token_id: int) -> str:
        """ASCII bytes are their character; a lone non-ASCII byte is U+FFFD (it is part of a character)."""
        i = int(token_id)
        if 0 <= i < 128:
            return chr(i)
        if 128 <= i < 256:
            return REPLACEMENT
        return self._special_name(i)

    def _special_name(self, i: int) -> str:
        j = i - 256
        if not 0 <= j < len(self.special_tokens):
            raise ValueError(f"token id {i} is outside the byte tokenizer's vocabulary of {self.vocab_size}")
        return self.special_tokens[j]


class HFTokenizerFile:
    """A local Hugging Face `tokenizer.json`, read with the optional `tokenizers` package; never downloads."""

    name = "hf_file"

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError as e:  # optional extra
            raise ImportError(
                "HFTokenizerFile needs the 'tokenizers' package: pip install tokenizers (or pip install 'sbif_dsl[hf]')"
            ) from e
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {self.path}")
        self._tok = _HFTokenizer.from_file(str(self.path))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        """The decoded text of one token (e.g. " the", not the vocabulary string "Ġthe")."""
        return self._tok.decode([int(token_id)], skip_special_tokens=False)

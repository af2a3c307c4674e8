"""Content keys: sha256 of canonical JSON. Never str(value), never joined strings (1 and "1" differ)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed separators, NaN rejected (it has no canonical form)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def stage_key(kind: str, version: int, fields: dict[str, Any], inputs: list[str]) -> str:
    """Key = hash(stage kind, hand-bumped code version, result-affecting fields, sorted parent keys)."""
    payload = {"kind": kind, "version": version, "fields": fields, "inputs": sorted(inputs)}
    return sha256_hex(canonical_json(payload))


def derive_seed(study_seed: int, *labels: Any) -> int:
    """One study seed derives every stage's seed; labels make streams independent."""
    digest = hashlib.sha256(canonical_json([study_seed, *labels]).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

"""A stage: a unit of work with a content key. `run` returns rows and artifacts; the executor commits them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hashing import stage_key
from ..store import StageOutput

if TYPE_CHECKING:
    from ..runtime import Session


@dataclass
class Stage:
    kind: str
    version: int
    fields: dict[str, Any]  # result-affecting fields only: they make the key
    inputs: list[str]  # keys of parent stages
    run: Callable[[Session, Stage, Path], StageOutput]
    step: int | None = None
    analysis: str | None = None
    parent: str | None = None
    label: str = ""
    seed: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)  # run-time only, never keyed
    key: str = ""

    def __post_init__(self) -> None:
        self.key = stage_key(self.kind, self.version, self.fields, self.inputs)

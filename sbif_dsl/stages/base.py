"""A stage: a frozen description of one unit of work, and what its run receives.

A stage's key hashes exactly (kind, version, params, sorted input keys). Its run is a function of those params,
the resolved artifacts of its declared inputs and a small `WorkerContext` (the spec and the process's threads):
it never opens the cache, so the executor can run it in this process, in a fresh one, or on a Ray worker, and
commit what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..hashing import stage_key

if TYPE_CHECKING:
    from ..spec import LoadedSpec

__all__ = ["Inputs", "Stage", "StageMeta", "StageOutput", "WorkerContext"]


@dataclass
class StageOutput:
    """What a run returns: rows per result table (column -> sequence), artifact files written to the run's folder,
    and what was measured where it ran (kept in the stage's provenance, never in a key or an artifact)."""

    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageMeta:
    """Cosmetic: shown in `stages`, the progress lines and the report; never part of a key."""

    step: int | None = None
    analysis: str | None = None
    parent: str | None = None
    label: str = ""
    source: str | None = None  # a user file the run reads (loaded weights), checked against a keyed content hash


@dataclass(frozen=True)
class Stage:
    kind: str
    version: int
    params: Mapping[str, Any]  # everything the result depends on besides the inputs: exactly what the key hashes
    inputs: tuple[str, ...]  # keys of the stages whose artifacts the run reads
    meta: StageMeta = StageMeta()
    # A stage the run may start from (training resumes from an earlier checkpoint). Resolved like an input but
    # not keyed: the result is bitwise the same from any start point (tested), so it is chosen at plan time.
    warm_start: str | None = None
    runner: str = ""  # which kind's run (stages/kinds.py); default: the kind
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "runner", self.runner or self.kind)
        object.__setattr__(self, "key", stage_key(self.kind, self.version, dict(self.params), list(self.inputs)))

    @property
    def step(self) -> int | None:
        return self.meta.step

    @property
    def analysis(self) -> str | None:
        return self.meta.analysis

    @property
    def label(self) -> str:
        return self.meta.label

    def needs(self) -> tuple[str, ...]:
        """Every key whose artifacts the run reads (what the executor resolves before running it)."""
        return self.inputs + ((self.warm_start,) if self.warm_start else ())


@dataclass(frozen=True)
class WorkerContext:
    """What a run may know besides its params and inputs: the validated spec (for building the data and model the
    spec describes, and its folder for `kind: python` code and data files) and the CPU threads it was given."""

    spec: LoadedSpec  # noqa: F821 - imported for type checking only
    dataset_digest: str  # the data the plan was keyed with: a worker whose spec folder differs must not run
    threads: int | None = None  # None: the process's default


@dataclass(frozen=True)
class Inputs:
    """The resolved artifacts of a stage's declared inputs: key -> {artifact name: local file}."""

    files: Mapping[str, Mapping[str, Path]]

    def file(self, key: str, name: str) -> Path:
        try:
            return self.files[key][name]
        except KeyError:
            raise KeyError(f"internal: input {key[:12]} has no artifact {name!r} (undeclared input?)") from None

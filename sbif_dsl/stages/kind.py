"""What a stage kind declares about itself, in its own module: version, run, result tables, views.

A kind module ends with one `KIND = Kind(...)` (or `AnalysisKind(...)` for a kind a spec's `analyses:` can name);
`stages/kinds.py` lists them once, and the plan, the spec loader, the JSON Schema, the store's DDL and the SQL views
loop over that list. Adding an analysis = one module + one line there (docs/ARCHITECTURE.md walks through it).

This module imports nothing heavy: the spec package reads the analysis kinds' spec models through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Table:
    """A result table: one row set per stage, every row carrying the stage's `key` (added here)."""

    name: str  # r_<something>
    columns: str  # DuckDB column definitions after `key VARCHAR`

    @property
    def ddl(self) -> str:
        return f"CREATE TABLE IF NOT EXISTS {self.name} (key VARCHAR, {self.columns})"

    def column_types(self) -> list[tuple[str, str]]:
        """[(column, DuckDB type)] (the types are single words: VARCHAR, DOUBLE, INTEGER, ...)."""
        return [tuple(c.split()) for c in self.columns.split(",")]


def estimate_columns(*names: str) -> str:
    """DDL of estimates with their uncertainty: name, name_se, name_lo, name_hi (the 95% interval)."""
    return ", ".join(f"{n} DOUBLE, {n}_se DOUBLE, {n}_lo DOUBLE, {n}_hi DOUBLE" for n in names)


@dataclass(frozen=True)
class View:
    """A documented SQL view over result tables: the stable surface users query (readable names, no hashes).

    `scope` in the SQL is replaced by the join that scopes rows to a study's stages (`ss`: study_stages with the
    study and the analysis name under which the study refers to the stage, `sr`: stage_registry)."""

    name: str
    sql: str
    doc: str


@dataclass(frozen=True)
class Kind:
    """A stage kind. `name` is what `Stage.runner` names (checkpoints have two runners: train and load)."""

    name: str
    version: int
    run: str  # "module:function", imported when a stage of this kind runs (a worker imports only what it runs)
    tables: tuple[Table, ...] = ()
    views: tuple[View, ...] = ()
    model: bool = False  # builds and evaluates the model: a GPU helps, a Ray task gives it its CPU threads


Attach = Literal["checkpoint", "sample", "study"]


@dataclass(frozen=True)
class AnalysisKind(Kind):
    """A kind that a spec's `analyses:` names. `spec` is its Pydantic model (with `kind: Literal[name]`).

    attach: what one stage of it reads. "checkpoint": one stage per checkpoint (its weights); "sample": one per
    checkpoint, reading that checkpoint's SGLD traces; "study": `build` makes the stages from the whole plan so far.
    The key holds the spec fields the model declares result-affecting (`Keyed.KEYED`), never its name.
    """

    spec: Any = None
    attach: Attach = "sample"
    references: tuple[str, ...] = ()  # spec fields that name an observable (checked by the loader)
    any_observable: tuple[str, ...] = ()  # references that may name any observable kind (the others: losses only)
    classes: bool = False  # reads the token-classes stage's masks
    params: Callable[..., dict] | None = None  # (rt, analysis) -> derived keyed params (e.g. an observable's set)
    build: Callable[..., list] | None = None  # attach "study": (rt, analysis, index, PlanSoFar) -> [Stage]
    problems: Callable[..., list] | None = None  # (study, index, analysis) -> [(field path, message)]
    helpers: tuple[Kind, ...] = ()  # further stage kinds its `build` makes (lds: one retrain stage per subset)

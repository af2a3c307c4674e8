"""A spec's `sweep:` expanded into cells: one validated study per combination of axis values.

A cell is the spec with its values assigned at their dotted paths (as `--set` does) and the sweep block removed,
validated like any spec, and named after its values (`toy_sweep[gamma=1e4,eps=1e-5]`). Every cell is validated
before anything runs; a problem names the cell and points at the axis' line. Nothing here computes: cells share
cached stages because their keys are equal where their values do not matter.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..errors import SpecError
from .loader import (
    LoadedSpec,
    _capped,
    _line_for,
    assign,
    field_path,
    format_validation_error,
    hierarchy_sets,
    ref_lines,
    reference_problems,
)
from .models import Study


@dataclass(frozen=True)
class Cell:
    """One combination of axis values and the study it defines."""

    index: int
    values: tuple[tuple[str, Any], ...]  # (dotted path, value), in axis order
    label: str  # "gamma=1e4,eps=1e-5" (short axis names)
    spec: LoadedSpec  # the cell's study, named `<sweep>[<label>]`, without the sweep block

    @property
    def name(self) -> str:
        return self.spec.study.name


def short_names(paths: list[str]) -> dict[str, str]:
    """Each axis' last path component where that is unambiguous among the axes, else its full path."""
    last = {p: ([k for k in p.split(".") if not k.isdigit()] or [p])[-1] for p in paths}
    return {p: last[p] if list(last.values()).count(last[p]) == 1 else p for p in paths}


def value_text(v: Any) -> str:
    """A value as it reads in a cell name: 1e4 -> 1e4 (not 10000.0), 3e-05 -> 3e-5, true, [16,16]."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), f"{v:g}")
    if isinstance(v, int | str):
        return str(v)
    return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)


def _combinations(axes: list[list[tuple[tuple[str, Any], ...]]]) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination, the last axis varying fastest (as nested loops in axis order)."""
    out: list[tuple[tuple[str, Any], ...]] = [()]
    for axis in axes:
        out = [combo + setting for combo in out for setting in axis]
    return out


def _axis_lines(spec: LoadedSpec) -> dict[str, int]:
    sweep = spec.study.sweep
    lines = {p: _line_for(("sweep", "grid", p), spec.lines) or 0 for p in sweep.grid}
    for i, group in enumerate(sweep.zip):
        lines.update({p: _line_for(("sweep", "zip", i, p), spec.lines) or 0 for p in group})
    return lines


def _check_size(spec: LoadedSpec, source: str) -> None:
    sweep = spec.study.sweep
    n = sweep.count()
    if n > sweep.max_cells:
        sizes = " × ".join(str(len(axis)) for axis in sweep.axes())
        line = _line_for(("sweep",), spec.lines) or "?"
        more = f"set `max_cells: {n}` in the sweep block if you mean it" if n > 1 else ""
        raise SpecError(
            [
                f"{source}:{line}: sweep: {n:,} cells ({sizes}) exceeds max_cells {sweep.max_cells:,}; "
                f"{more or 'raise max_cells'} (each cell samples every checkpoint)"
            ]
        )


def _check_overrides(spec: LoadedSpec, source: str, axis_lines: dict[str, int]) -> None:
    """A `--set` on a swept field would be overwritten in every cell: refuse it."""
    from_set = [p for p, line in spec.lines.items() if line == 0]
    for axis in axis_lines:
        keys = tuple(field_path(axis))
        for p in from_set:
            n = min(len(p), len(keys))
            if p[:n] == keys[:n]:
                raise SpecError(
                    [f"{source}:--set: {'.'.join(map(str, p))}: overlaps sweep axis {axis!r}; change the axis' values"]
                )


def cells(spec: LoadedSpec) -> list[Cell]:
    """The sweep's cells, every one validated (raises SpecError listing each problem once, with the cells it
    occurs in). A spec without a sweep has none."""
    sweep = spec.study.sweep
    if sweep is None:
        return []
    source = str(spec.path)
    _check_size(spec, source)
    axis_lines = _axis_lines(spec)
    _check_overrides(spec, source, axis_lines)
    names = short_names(list(axis_lines))
    base = {k: v for k, v in spec.raw.items() if k != "sweep"}
    problems: dict[str, list[str]] = {}  # problem -> labels of the cells it occurs in
    out = []
    for index, values in enumerate(_combinations(sweep.axes())):
        label = ",".join(f"{names[p]}={value_text(v)}" for p, v in values)
        data, lines = copy.deepcopy(base), dict(spec.lines)
        found = [
            f"{source}:{axis_lines[p] or '?'}: sweep axis {p}: {problem}"
            for p, v in values
            if (problem := assign(data, p, v, lines, axis_lines[p])) is not None
        ]
        study = None
        if not found:
            try:
                study = Study.model_validate(data)
            except ValidationError as e:
                found = format_validation_error(e, data, lines, source)
            else:
                found = ref_lines(reference_problems(study, hierarchy_sets(study)), lines, source)
        for p in found:
            problems.setdefault(p, []).append(label)
        if study is not None and not found:
            named = study.model_copy(update={"name": f"{spec.study.name}[{label}]"})
            cell_spec = LoadedSpec(study=named, path=spec.path, raw=data, text=spec.text, lines=lines)
            out.append(Cell(index, values, label, cell_spec))
    if problems:
        lines_out = []
        for p, labels in problems.items():
            shown = ", ".join(f"[{lab}]" for lab in labels[:3]) + (
                f" and {len(labels) - 3} more" if len(labels) > 3 else ""
            )
            lines_out.append(f"{p} (sweep cell{'s' if len(labels) > 1 else ''} {shown})")
        raise SpecError(_capped(lines_out))
    if len({c.name for c in out}) < len(out):  # two values that read the same: fall back to exact values
        return [
            Cell(c.index, c.values, lab, _renamed(c.spec, f"{spec.study.name}[{lab}]"))
            for c in out
            for lab in [",".join(f"{names[p]}={json.dumps(v, default=str)}" for p, v in c.values)]
        ]
    return out


def _renamed(spec: LoadedSpec, name: str) -> LoadedSpec:
    return LoadedSpec(
        study=spec.study.model_copy(update={"name": name}), path=spec.path, raw=spec.raw, text=spec.text,
        lines=spec.lines,
    )  # fmt: skip

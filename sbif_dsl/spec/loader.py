"""Load a YAML spec into a `Study`, turning every problem into one line: file:line: field.path: what, hint."""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError
from .models import Study, analysis_name

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class LoadedSpec:
    """A validated study plus where it came from (for relative paths and error messages)."""

    study: Study
    path: Path
    raw: dict
    text: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent


# ----------------------------------------------------------------------------- YAML with line numbers


def _line_map(node: yaml.Node, path: Path_ = (), out: dict | None = None) -> dict[Path_, int]:
    """Map every field path to the 1-based line where it is written."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_map(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _line_map(v, path + (i,), out)
    return out


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError([f"{source}:{line}: invalid YAML: {problem}"]) from None
    return data, (_line_map(node) if node is not None else {})


# ----------------------------------------------------------------------------- --set overrides


def apply_overrides(data: dict, overrides: list[str], lines: dict[Path_, int]) -> dict:
    """Apply `a.b.0.c=value` overrides (values parsed as YAML) before validation."""
    for item in overrides:
        if "=" not in item:
            raise SpecError([f"--set {item}: expected FIELD.PATH=VALUE, e.g. --set sampler.eps=1e-5"])
        dotted, value_text = item.split("=", 1)
        keys: list[Any] = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError:
            value = value_text
        node = data
        for i, k in enumerate(keys[:-1]):
            nxt = keys[i + 1]
            if isinstance(node, list):
                if not isinstance(k, int) or k >= len(node):
                    raise SpecError([f"--set {item}: {'.'.join(map(str, keys[: i + 1]))} does not exist"])
                node = node[k]
            else:
                if k not in node or node[k] is None:
                    node[k] = [] if isinstance(nxt, int) else {}
                node = node[k]
        last = keys[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise SpecError([f"--set {item}: index {last} does not exist"])
        node[last] = value
        lines[tuple(keys)] = 0  # 0 marks "from --set"
    return data


# ----------------------------------------------------------------------------- error formatting


def _unwrap(tp: Any) -> list[Any]:
    """Candidate model classes behind an annotation (Optional, list, Annotated, unions)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (list, tuple, dict) or origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return [c for a in typing.get_args(tp) for c in _unwrap(a)]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return []


def _model_at(path: Path_, data: Any) -> type[BaseModel] | None:
    """Which model class validates the mapping at `path` (resolving `kind:` unions from the data)."""
    model: type[BaseModel] | None = Study
    node = data
    for key in path:
        if isinstance(key, int):
            node = node[key] if isinstance(node, list) and key < len(node) else None
            continue
        if model is None or key not in model.model_fields:
            return None
        node = node.get(key) if isinstance(node, dict) else None
        candidates = _unwrap(model.model_fields[key].annotation)
        model = None
        for c in candidates:
            kind_field = c.model_fields.get("kind")
            if kind_field is None or (
                isinstance(node, dict) and node.get("kind") in typing.get_args(kind_field.annotation)
            ):
                model = c
                break
    return model


def _clean_loc(loc: tuple, data: Any) -> Path_:
    """Drop the discriminator tags and validator names Pydantic inserts into error locations."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and node.get("kind") == part:
            continue
        elif isinstance(part, str) and ("[" in part or part.startswith("function")):
            continue
        else:
            out.append(part)
            node = None
    return tuple(out)


def _line_for(path: Path_, lines: dict[Path_, int]) -> int | None:
    for i in range(len(path), -1, -1):
        if path[:i] in lines:
            return lines[path[:i]]
    return None


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _hint(err: dict, path: Path_, data: Any) -> str:
    typ = err["type"]
    if typ == "extra_forbidden":
        model = _model_at(path[:-1], data)
        if model is not None:
            allowed = sorted(model.model_fields)
            close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
            guess = f"did you mean '{close[0]}'? " if close else ""
            return f"unknown field; {guess}allowed: {', '.join(allowed)}"
        return "unknown field"
    if typ == "missing":
        model = _model_at(path[:-1], data)
        if model is not None and path and path[-1] in model.model_fields:
            desc = model.model_fields[path[-1]].description or ""
            return f"required field missing ({desc})" if desc else "required field missing"
        return "required field missing"
    if typ == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if typ == "union_tag_not_found":
        return f"missing 'kind'; expected one of {err.get('ctx', {}).get('expected_tags')}"
    msg = err["msg"]
    if "input" in err and typ not in ("model_type",) and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return msg


def format_validation_error(e: ValidationError, data: Any, lines: dict[Path_, int], source: str) -> list[str]:
    problems = []
    for err in e.errors():
        path = _clean_loc(err["loc"], data)
        line = _line_for(path, lines)
        where = f"{source}:{line}" if line else f"{source}:--set" if line == 0 else source
        problems.append(f"{where}: {_dotted(path)}: {_hint(err, path, data)}")
    return problems


# ----------------------------------------------------------------------------- cross references


def reference_problems(study: Study, data_sets: set[str] | None) -> list[tuple[Path_, str]]:
    """Names that must refer to something declared elsewhere in the spec."""
    problems: list[tuple[Path_, str]] = []
    obs_names = [o.name for o in study.observables]
    for i, o in enumerate(study.observables):
        if obs_names.count(o.name) > 1:
            problems.append((("observables", i, "name"), f"duplicate observable name {o.name!r}"))
        if data_sets is not None and o.data not in data_sets:
            problems.append(
                (("observables", i, "data"), f"no data set {o.data!r}; available: {', '.join(sorted(data_sets))}")
            )
    names = [analysis_name(a) for a in study.analyses]
    from ..stages.kinds import ANALYSIS

    for i, a in enumerate(study.analyses):
        if names.count(names[i]) > 1:
            problems.append((("analyses", i), f"duplicate analysis name {names[i]!r}; give each a distinct 'name'"))
        same = next((j for j, b in enumerate(study.analyses[:i]) if _unnamed(b) == _unnamed(a)), None)
        if same is not None:
            problems.append((("analyses", i), f"computes the same as analysis {names[same]!r} (only the name differs)"))
        kind = ANALYSIS[a.kind]
        for field in kind.references:
            value = getattr(a, field)
            if value is not None and value not in obs_names:
                problems.append((("analyses", i, field), f"no observable {value!r}; declared: {', '.join(obs_names)}"))
        if kind.problems is not None:
            problems.extend(kind.problems(study, i, a))
    problems.extend(validation_problems(study))
    if study.data.kind == "hierarchy":
        items = set(study.data.names())
        for qname, members in study.data.query_sets.items():
            for j, m in enumerate(members):
                if m not in items:
                    problems.append(
                        (("data", "query_sets", qname, j), f"no item {m!r}; items: {', '.join(study.data.names())}")
                    )
        for i, pair in enumerate(study.report.pairs):
            for j, m in enumerate(pair):
                if m not in items:
                    problems.append(
                        (("report", "pairs", i, j), f"no sample {m!r}; items: {', '.join(study.data.names())}")
                    )
    return problems


def _unnamed(a) -> dict:
    """An analysis without its name: two that agree here would be one stage (names are not part of keys)."""
    return a.model_dump(exclude={"name"})


def validation_problems(study: Study) -> list[tuple[Path_, str]]:
    """bfloat16 sampling autocasts float32 weights only."""
    if study.sampler.precision == "bfloat16" and study.dtype != "float32":
        return [(("sampler", "precision"), f"bfloat16 autocasts float32 weights; this study has dtype {study.dtype}")]
    return []


def hierarchy_sets(study: Study) -> set[str] | None:
    if study.data.kind == "hierarchy":
        return {"train", *study.data.query_sets}
    return None  # known only once user code runs; checked again at plan time


# ----------------------------------------------------------------------------- entry point


def load_spec(path: str | Path, overrides: list[str] | None = None) -> LoadedSpec:
    """Read, override, validate and cross-check a spec. Raises SpecError with one line per problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"{source}: file not found"]) from None
    except OSError as e:
        raise SpecError([f"{source}: cannot read: {e.strerror}"]) from None
    data, lines = _parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{source}:1: (top level): expected a mapping of fields (name, model, data, ...)"])
    data = apply_overrides(data, overrides or [], lines)
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, data, lines, source)) from None
    refs = reference_problems(study, hierarchy_sets(study))
    if refs:
        raise SpecError(ref_lines(refs, lines, source))
    return LoadedSpec(study=study, path=path.resolve(), raw=data, text=text)


def ref_lines(refs: list[tuple[Path_, str]], lines: dict[Path_, int], source: str) -> list[str]:
    return [f"{source}:{_line_for(p, lines) or '?'}: {_dotted(p)}: {msg}" for p, msg in refs]


def spec_problem(spec: LoadedSpec, path: Path_, msg: str) -> SpecError:
    """A SpecError found after loading (e.g. when user code reveals its data sets)."""
    _, lines = _parse_yaml(spec.text, str(spec.path))
    return SpecError(ref_lines([(path, msg)], lines, str(spec.path)))

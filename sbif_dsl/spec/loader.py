"""Load a YAML spec into a `Study`, turning every problem into one line: file:line: field.path: what, hint.

Loading is bounded whatever the bytes: at most `MAX_BYTES` of UTF-8 text without control characters, parsed once
(libyaml's event parser when PyYAML has it, this module's composer) into at most `MAX_NODES` values nested at most
`MAX_DEPTH` deep. A spec may not use YAML aliases or merge keys (a few lines of aliases expand into gigabytes, and
a spec never needs them), nor give a key twice in one mapping (YAML keeps the last silently; we name both lines).
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from ..errors import SpecError
from .models import Study, TokenClasses, analysis_name

Path_ = tuple[Any, ...]

MAX_BYTES = 1_000_000  # a spec is a few KB; parsing stays well under a second up to here
MAX_NODES = 20_000  # values (scalars, lists, mappings) in one spec; the demo specs have ~150
MAX_DEPTH = 64  # nesting of lists/mappings; the DSL needs 6
MAX_NUMBER_CHARS = 40  # an integer literal longer than this is no count (and Python refuses > 4300 digits)
MAX_PROBLEMS = 50  # lines reported at once; the rest are summarized in one line

# The built-in structural token classes (sbif_dsl.tokens.classes.STRUCTURAL_DEFAULT, which imports torch: the
# loader must not; tests/test_spec_hostile.py checks the two agree).
STRUCTURAL_CLASSES = ("delimiters", "formatting", "punctuation", "digits", "word_start", "word_continuation")

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# What YAML itself accepts as text (YAML 1.1 "printable"), so our message comes before PyYAML's.
_NOT_TEXT = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class LoadedSpec:
    """A validated study plus where it came from (for relative paths and error messages)."""

    study: Study
    path: Path
    raw: dict
    text: str
    lines: dict = field(default_factory=dict, compare=False, repr=False)  # field path -> line (0: from --set)
    warnings: list[str] = field(default_factory=list, compare=False)  # settings that run but bias results

    @property
    def base_dir(self) -> Path:
        return self.path.parent


# ----------------------------------------------------------------------------- YAML with line numbers, bounded


class _Refused(Exception):
    """A spec problem found while reading YAML: the 1-based line, the field path (as far as known), the message."""

    def __init__(self, line: int | str, path: Path_, msg: str):
        super().__init__(msg)
        self.line, self.path, self.msg = line, path, msg

    def text(self, source: str) -> str:
        where = f"{_dotted(self.path)}: " if self.path else ""
        return f"{source}:{self.line}: {where}{self.msg}"


if yaml.__with_libyaml__:  # libyaml scans and parses (fast, not recursive); composing stays in Python, bounded
    from yaml._yaml import CParser

    class _Parser(Composer, CParser, SafeConstructor, Resolver):
        def __init__(self, text: str):
            CParser.__init__(self, text)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pure Python PyYAML: the same limits, about three times slower

    class _Parser(yaml.SafeLoader):  # type: ignore[no-redef]
        pass


def _part(parent: Node | None, index: Any) -> Any:
    """The path component of the node composed as child `index` of `parent` (the Composer's convention)."""
    if isinstance(index, int):
        return index
    if isinstance(index, ScalarNode):
        return index.value
    return "?"  # a key being composed, or a complex key's value


class _SpecLoader(_Parser):
    """Composes YAML into nodes with limits: no aliases, at most MAX_NODES nodes, MAX_DEPTH levels."""

    def __init__(self, text: str):
        super().__init__(text)
        self.spec_nodes = 0
        self.spec_path: list[Any] = []

    def compose_node(self, parent, index):
        if parent is not None:
            self.spec_path.append(_part(parent, index))
        try:
            if self.check_event(AliasEvent):
                event = self.peek_event()
                raise _Refused(
                    event.start_mark.line + 1,
                    tuple(self.spec_path),
                    f"YAML alias '*{event.anchor}' is not allowed in a spec; write the value out in full "
                    "(anchors and aliases can expand a few lines into gigabytes, and a spec never needs them)",
                )
            self.spec_nodes += 1
            if self.spec_nodes > MAX_NODES or len(self.spec_path) >= MAX_DEPTH:
                what = (
                    f"more than {MAX_NODES} values in one spec (a spec has a few hundred)"
                    if self.spec_nodes > MAX_NODES
                    else f"nested more than {MAX_DEPTH} levels deep (a spec needs about 6)"
                )
                raise _Refused(self.peek_event().start_mark.line + 1, tuple(self.spec_path[:8]), what)
            try:
                return super().compose_node(parent, index)
            except yaml.YAMLError as e:  # remember the innermost open node for the message
                if not hasattr(e, "spec_path"):
                    e.spec_path = tuple(self.spec_path)
                raise
        finally:
            if parent is not None:
                self.spec_path.pop()


def _scalar(loader: _SpecLoader, node: ScalarNode, path: Path_) -> Any:
    line = node.start_mark.line + 1
    if node.tag == _INT_TAG and len(node.value) > MAX_NUMBER_CHARS:
        raise _Refused(line, path, f"number with {len(node.value)} characters; numbers in a spec are far smaller")
    try:
        return loader.construct_object(node)
    except yaml.YAMLError as e:
        raise _Refused(line, path, getattr(e, "problem", None) or str(e)) from None
    except Exception as e:  # PyYAML's scalar constructors raise ValueError, KeyError... (e.g. on 2024-13-01)
        tag = node.tag.rsplit(":", 1)[-1]
        raise _Refused(line, path, f"cannot read {_short(node.value)} as a {tag}: {e}") from None


def _build(loader: _SpecLoader, node: Node, path: Path_, lines: dict, dups: list) -> Any:
    """Python data from a node tree (no aliases: a tree), recording each path's line and any repeated key."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, MappingNode):
        if node.tag != _MAP_TAG:
            raise _Refused(node.start_mark.line + 1, path, f"YAML tag {node.tag!r} is not supported in a spec")
        out: dict = {}
        first: dict = {}
        for k, v in node.value:
            kline = k.start_mark.line + 1
            if not isinstance(k, ScalarNode):
                raise _Refused(kline, path, "a key must be a name, not a list or a mapping")
            if k.tag == _MERGE_TAG:
                raise _Refused(
                    kline, path, "YAML merge keys (<<) are not allowed in a spec; write the fields out in full"
                )
            key = _scalar(loader, k, path)
            if key in first:
                dups.append(
                    (kline, path + (key,), f"given twice in one mapping, on lines {first[key]} and {kline}; keep one")
                )
                continue
            first[key] = kline
            lines[path + (key,)] = kline
            out[key] = _build(loader, v, path + (key,), lines, dups)
        return out
    if isinstance(node, SequenceNode):
        if node.tag != _SEQ_TAG:
            raise _Refused(node.start_mark.line + 1, path, f"YAML tag {node.tag!r} is not supported in a spec")
        items = []
        for i, v in enumerate(node.value):
            lines[path + (i,)] = v.start_mark.line + 1
            items.append(_build(loader, v, path + (i,), lines, dups))
        return items
    return _scalar(loader, node, path)


def _load_yaml(text: str) -> tuple[Any, dict[Path_, int], list[tuple[int, Path_, str]]]:
    """(data, line map, repeated keys) from one bounded parse. Raises _Refused or yaml.YAMLError."""
    bad = _NOT_TEXT.search(text)
    if bad is not None:
        pos = bad.start()
        line, col = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        raise _Refused(
            line,
            (),
            f"control character U+{ord(bad.group()):04X} at column {col}; a spec is plain text: delete it "
            '(a double-quoted string can spell one as an escape, e.g. "\\t")',
        )
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {(): 1}, []
        lines: dict[Path_, int] = {}
        dups: list[tuple[int, Path_, str]] = []
        data = _build(loader, node, (), lines, dups)
        return data, lines, dups
    finally:
        loader.dispose()


def _yaml_error(e: yaml.YAMLError, text: str, source: str) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        line: int | str = mark.line + 1
    elif isinstance(getattr(e, "position", None), int):  # a ReaderError
        line = text.count("\n", 0, e.position) + 1
    else:
        line = "?"
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if "nesting depth" in problem:  # libyaml's own limit (1000), before ours
        problem = f"nested more than {MAX_DEPTH} levels deep (a spec needs about 6)"
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if isinstance(e, ComposerError) and "another document" in problem:
        problem = "a second YAML document ('---'); a spec is one document"
    elif context and context_mark is not None and context_mark.line + 1 != line:
        problem += f" ({context}, on line {context_mark.line + 1})"
    path = getattr(e, "spec_path", ())
    where = f"{_dotted(path)}: " if path else ""
    return f"{source}:{line}: {where}invalid YAML: {problem}"


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Data and line map of a spec's text; every problem is a SpecError."""
    try:
        data, lines, dups = _load_yaml(text)
    except _Refused as e:
        raise SpecError([e.text(source)]) from None
    except yaml.YAMLError as e:
        raise SpecError([_yaml_error(e, text, source)]) from None
    if dups:
        raise SpecError(_capped([f"{source}:{line}: {_dotted(p)}: {msg}" for line, p, msg in dups]))
    return data, lines


def _read_text(path: Path, source: str) -> str:
    """The file's text: at most MAX_BYTES of UTF-8 (read no further, whatever the file is)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([f"{source}: file not found"]) from None
    except OSError as e:
        raise SpecError([f"{source}: cannot read: {e.strerror or e}"]) from None
    if len(raw) > MAX_BYTES:
        raise SpecError(
            [
                f"{source}:1: file is larger than {MAX_BYTES // 1_000_000} MB ({MAX_BYTES} bytes), the limit for a "
                "spec; a spec is a few KB: is this the right file?"
            ]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        hint = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise SpecError(
            [
                f"{source}:{line}: not valid UTF-8: byte 0x{raw[e.start]:02x} at column {col}{hint}; "
                "save the spec as UTF-8 text"
            ]
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as Path.read_text gave


# ----------------------------------------------------------------------------- --set overrides


def _override_value(item: str, value_text: str, source: str) -> Any:
    """A --set value, parsed as YAML under the same limits as a file (text YAML cannot parse stays a string)."""
    try:
        value_text.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError([f"{source}--set: {item}: the value is not valid UTF-8"]) from None
    try:
        value, _, dups = _load_yaml(value_text)
    except _Refused as e:
        raise SpecError([f"{source}--set: {item}: {e.msg}"]) from None
    except yaml.YAMLError:
        return value_text
    if dups:
        raise SpecError([f"{source}--set: {item}: {_dotted(dups[0][1])}: a key is given twice"])
    return value


def apply_overrides(data: dict, overrides: list[str], lines: dict[Path_, int], source: str = "") -> dict:
    """Apply `a.b.0.c=value` overrides (values parsed as YAML) before validation. Errors: `SOURCE:--set: ...`."""
    source = f"{source}:" if source else ""
    for item in overrides:
        shown = _short(item, 100, quote=False)
        if "=" not in item:
            raise SpecError([f"{source}--set: {shown}: expected FIELD.PATH=VALUE, e.g. --set sampler.eps=1e-5"])
        dotted, value_text = item.split("=", 1)
        problem = assign(data, dotted, _override_value(shown, value_text, source), lines, 0)
        if problem:
            raise SpecError([f"{source}--set: {shown}: {problem}"])
    return data


def field_path(dotted: str) -> list[Any]:
    """'analyses.0.normalize' -> ['analyses', 0, 'normalize'] (digits index lists)."""
    return [int(k) if k.isascii() and k.isdigit() and len(k) < 10 else k for k in dotted.split(".")]


def assign(data: dict, dotted: str, value: Any, lines: dict[Path_, int], line: int) -> str | None:
    """Set the field at a dotted path (creating missing mappings, as `--set` does) and record `line` for it
    (0: from --set); None, or what is wrong with the path."""
    keys = field_path(dotted)
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        nxt = keys[i + 1]
        here = ".".join(map(str, keys[: i + 1]))
        if isinstance(node, list):
            if not isinstance(k, int) or k >= len(node):
                return f"{here} does not exist"
            node = node[k]
        else:
            if k not in node or node[k] is None:
                node[k] = [] if isinstance(nxt, int) else {}
            node = node[k]
        if not isinstance(node, dict | list):
            return f"{here} holds {_short(node, 40)}, not a mapping or a list"
    last = keys[-1]
    if isinstance(node, list) and (not isinstance(last, int) or last >= len(node)):
        return f"index {last} does not exist"
    node[last] = value
    prefix = tuple(keys)
    for p in [p for p in lines if p[: len(prefix)] == prefix]:
        del lines[p]  # the file's lines no longer describe what is there
    lines[prefix] = line
    return None


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


def _kinds_at(path: Path_, data: Any) -> list[str]:
    """The `kind:` values the union at `path` accepts (e.g. model: deep_linear, python, ...)."""
    keys = [i for i, k in enumerate(path) if isinstance(k, str)]
    if not keys:
        return []
    model = _model_at(path[: keys[-1]], data)
    if model is None or path[keys[-1]] not in model.model_fields:
        return []
    kinds = []
    for c in _unwrap(model.model_fields[path[keys[-1]]].annotation):
        if "kind" in c.model_fields:
            kinds += [k for k in typing.get_args(c.model_fields["kind"].annotation) if k not in kinds]
    return kinds


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
        elif node is not None and not isinstance(node, dict | list) and isinstance(part, str):
            continue  # a union member's tag under a scalar value (eps: float | 'auto')
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
    parts = [_short(p, 40, quote=False) for p in path]
    if len(parts) > 12:
        parts = [*parts[:10], f"…({len(parts) - 10} more levels)"]
    return ".".join(parts) or "(top level)"


def _short(value: Any, limit: int = 60, quote: bool = True) -> str:
    """A value for a message: repr (or str), cut to `limit` characters."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)" if quote else f"{value[:limit]}…"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**limit:
        return f"a number of {len(str(abs(value)))} digits" if abs(value) < 10**4000 else "a huge number"
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit + 2 else text[:limit] + "…"


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(_short(n, 40, quote=False) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


_NUMBER_HINT = {
    "int_type": "expected an integer (e.g. 3; not 3.0, '3' or true/false)",
    "bool_type": "expected true or false",
    "float_type": "expected a number (e.g. 0.05 or 1e-5)",
}


def _hint(err: dict, path: Path_, data: Any) -> str:
    typ = err["type"]
    if typ == "extra_forbidden":
        model = _model_at(path[:-1], data)
        if model is not None:
            allowed = sorted(model.model_fields)
            close = difflib.get_close_matches(str(path[-1])[:100], allowed, n=1)
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
        return f"unknown kind {_short(ctx.get('tag'))}; expected one of {ctx.get('expected_tags')}"
    if typ == "union_tag_not_found":
        return f"missing 'kind'; expected one of {', '.join(_kinds_at(path, data)) or '(see sbif schema)'}"
    msg = _NUMBER_HINT.get(typ, err["msg"].removeprefix("Value error, "))
    if "input" in err and typ not in ("model_type",) and not isinstance(err["input"], dict | list):
        msg += f" (got {_short(err['input'])})"
    return msg


def _capped(problems: list[str], total: int | None = None) -> list[str]:
    """At most MAX_PROBLEMS lines (of `total` problems); the rest become one line, at the first omitted one's place."""
    total = len(problems) if total is None else total
    if total <= MAX_PROBLEMS:
        return problems
    where = problems[MAX_PROBLEMS].split(": ", 1)[0]
    return [*problems[:MAX_PROBLEMS], f"{where}: … and {total - MAX_PROBLEMS} more problems like these"]


def format_validation_error(e: ValidationError, data: Any, lines: dict[Path_, int], source: str) -> list[str]:
    errors = e.errors()
    problems: list[str] = []
    merged = 0
    at: dict[Path_, int] = {}  # path -> its line in problems: a union's members fail at the same field
    for err in errors[: MAX_PROBLEMS + 1]:
        path = _clean_loc(err["loc"], data)
        if path in at and err["type"] == "literal_error":  # eps: a number in range, or 'auto'
            problems[at[path]] += f"; or {err['ctx']['expected']}"
            merged += 1
            continue
        line = _line_for(path, lines)
        where = f"{source}:{line}" if line else f"{source}:--set" if line == 0 else f"{source}:?"
        at.setdefault(path, len(problems))
        problems.append(f"{where}: {_dotted(path)}: {_hint(err, path, data)}")
    return _capped(problems, len(errors) - merged)


# ----------------------------------------------------------------------------- cross references


def token_class_names(study: Study) -> list[str]:
    """Every token class the study's token_classes define (sbif_dsl.stages.tokens.rules, plus the remainder)."""
    tc = study.token_classes or TokenClasses()
    names = (["induction"] if tc.induction else []) + (list(STRUCTURAL_CLASSES) if tc.structural == "default" else [])
    return [*names, *(n for n in tc.rules if n not in names), tc.remainder]


def reference_problems(study: Study, data_sets: set[str] | None) -> list[tuple[Path_, str]]:
    """Names that must refer to something declared elsewhere in the spec."""
    problems: list[tuple[Path_, str]] = []
    obs_names = [o.name for o in study.observables]
    for i, o in enumerate(study.observables):
        if obs_names.count(o.name) > 1:
            problems.append((("observables", i, "name"), f"duplicate observable name {o.name!r}"))
        if data_sets is not None and o.data is not None and o.data not in data_sets:
            problems.append(
                (("observables", i, "data"), f"no data set {o.data!r}; available: {_listing(sorted(data_sets))}")
            )
    kind_of = {o.name: o.kind for o in study.observables}
    names = [analysis_name(a) for a in study.analyses]
    unnamed = [_unnamed(a) for a in study.analyses]
    from ..stages.kinds import ANALYSIS

    for i, a in enumerate(study.analyses):
        if names.count(names[i]) > 1:
            problems.append((("analyses", i), f"duplicate analysis name {names[i]!r}; give each a distinct 'name'"))
        same = next((j for j in range(i) if unnamed[j] == unnamed[i]), None)
        if same is not None:
            problems.append((("analyses", i), f"computes the same as analysis {names[same]!r} (only the name differs)"))
        kind = ANALYSIS[a.kind]
        for field_name in kind.references:
            value = getattr(a, field_name)
            if value is not None and value not in obs_names:
                problems.append(
                    (("analyses", i, field_name), f"no observable {value!r}; declared: {_listing(obs_names)}")
                )
            elif value is not None and field_name not in kind.any_observable and kind_of[value] != "loss":
                problems.append(
                    (
                        ("analyses", i, field_name),
                        f"{a.kind}.{field_name} reads losses; observable {value!r} is kind {kind_of[value]!r} "
                        "(hint: the target of a bif or a class_bif may be any observable)",
                    )
                )
        if kind.problems is not None:
            problems.extend(kind.problems(study, i, a))
    problems.extend(validation_problems(study))
    if study.data.kind == "hierarchy":
        item_list = study.data.names()
        items = set(item_list)
        for qname, members in study.data.query_sets.items():
            for j, m in enumerate(members):
                if m not in items:
                    problems.append((("data", "query_sets", qname, j), f"no item {m!r}; items: {_listing(item_list)}"))
        for i, pair in enumerate(study.report.pairs):
            for j, m in enumerate(pair):
                if m not in items:
                    problems.append((("report", "pairs", i, j), f"no sample {m!r}; items: {_listing(item_list)}"))
    if study.report.class_pairs:
        classes = token_class_names(study)
        for i, pair in enumerate(study.report.class_pairs):
            for j, c in enumerate(pair):
                if c not in classes:
                    close = difflib.get_close_matches(c, classes, n=1)
                    guess = f"did you mean {close[0]!r}? " if close else ""
                    problems.append(
                        (("report", "class_pairs", i, j), f"no token class {c!r}; {guess}classes: {_listing(classes)}")
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
    text = _read_text(path, source)
    data, lines = _parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{source}:1: (top level): expected a mapping of fields (name, model, data, ...)"])
    data = apply_overrides(data, overrides or [], lines, source)
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, data, lines, source)) from None
    refs = reference_problems(study, hierarchy_sets(study))
    if refs:
        raise SpecError(_capped(ref_lines(refs, lines, source)))
    warnings = ref_lines(study.sampler.warnings(), lines, source)
    return LoadedSpec(study=study, path=path.resolve(), raw=data, text=text, lines=lines, warnings=warnings)


def ref_lines(refs: list[tuple[Path_, str]], lines: dict[Path_, int], source: str) -> list[str]:
    out = []
    for p, msg in refs:
        line = _line_for(p, lines)
        out.append(f"{source}:{line if line else '--set' if line == 0 else '?'}: {_dotted(p)}: {msg}")
    return out


def spec_problem(spec: LoadedSpec, path: Path_, msg: str) -> SpecError:
    """A SpecError found after loading (e.g. when user code reveals its data sets)."""
    lines = spec.lines or _parse_yaml(spec.text, str(spec.path))[1]
    return SpecError(ref_lines([(path, msg)], lines, str(spec.path)))

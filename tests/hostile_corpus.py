"""Hostile spec inputs: hand-written worst cases (one per class of bad input) and a mutation generator.

`CASES` are the worst cases the loader must refuse with one line (file:line: field: what; hint) in bounded time and
memory. `mutations()` is a Hypothesis strategy that damages real specs (the shipped ones and the tests' tiny ones)
the ways files get damaged or abused: byte flips, deleted/duplicated/truncated lines, swapped value types, deep
nesting, aliases, huge numbers, unicode and control characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from .conftest import REPO, TINY_SPEC
from .test_lm_e2e import LM_SPEC

TOY = (REPO / "specs" / "toy_hierarchy.yaml").read_text()
INDUCTION = (REPO / "specs" / "induction_lm.yaml").read_text()

SECTIONS = """\
report:
  sections:
    - title: LLC per chain
      sql: SELECT step, chain::VARCHAR AS chain, llc FROM llc WHERE study = 'tiny'
      chart: line
      x: step
      y: llc
    - title: Checkpoints
      sql: SELECT * FROM checkpoints WHERE study = 'tiny'
"""

BASES: dict[str, str] = {
    "toy_hierarchy": TOY,
    "induction_lm": INDUCTION,
    "tiny": TINY_SPEC,
    "tiny_lm": LM_SPEC,
}
SECTIONED = TINY_SPEC + SECTIONS  # the one base whose load_checked runs DuckDB


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str  # a substring of the (first) problem
    line: int | str  # the line it must name ("--set" for overrides)


def _sub(text: str, old: str, new: str) -> bytes:
    assert old in text, old
    return text.replace(old, new, 1).encode()


def _laughs(levels: int = 9) -> bytes:
    out = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    out += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return ("\n".join(out) + f"\nname: *a{levels - 1}\n").encode()


def hostile_cases() -> list[Case]:
    big_int = "1180591620717411303424"
    steps = "steps: [250, 1000, 1250, 1500, 1750, 2000, 2125, 2250, 2375, 2500, 2750, 3000]"
    return [
        Case("not_utf8", b"name: t\xff\xfeoo\n" + TOY.encode(), "not valid UTF-8: byte 0xff at column 8", 1),
        Case("utf16", "name: x\n".encode("utf-16"), "not valid UTF-8", 1),
        Case("deep_flow", b"name: x\nmodel: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "levels deep", 2),
        Case("deep_block", "".join(" " * i + f"k{i}:\n" for i in range(1000)).encode(), "levels deep", 64),
        Case("billion_laughs", _laughs(), "YAML alias '*a0' is not allowed", 2),
        Case("alias", _sub(TOY, "  chains: 8", "  chains: &c 8\n  draws: *c"), "YAML alias '*c'", 41),
        Case("merge_key", _sub(TOY, "sampler:\n", "sampler:\n  <<: {chains: 3}\n"), "merge keys (<<)", 36),
        Case("huge_file", b"name: x\ndescription: " + b"y" * 5_000_000 + b"\n", "larger than 1 MB", 1),
        Case("many_values", (TOY + "x: [" + ",".join(["1"] * 30_000) + "]\n").encode(), "more than 20000 values", 66),
        Case("control_char", _sub(TOY, "seed: 0", "seed: 0\x07"), "control character U+0007 at column 8", 9),
        Case("nul", _sub(TOY, "seed: 0", "seed: \x000"), "control character U+0000", 9),
        Case(
            "duplicate_key",
            _sub(TOY, "seed: 0\n", "seed: 0\nseed: 1\n"),
            "given twice in one mapping, on lines 9 and 10",
            10,
        ),
        Case("bool_lr", _sub(TOY, "lr: 0.05", "lr: true"), "training.lr: expected a number, not true/false", 26),
        Case("bool_count", _sub(TOY, "chains: 8", "chains: yes"), "sampler.chains: expected an integer", 40),
        Case("float_count", _sub(TOY, "steps: 3000", "steps: 3000.5"), "training.steps: expected an integer", 27),
        Case("nan", _sub(TOY, "eps: auto", "eps: .nan"), "sampler.eps: expected a finite number", 37),
        Case("inf", _sub(TOY, "gamma: 1.0e+5", "gamma: 1e999"), "sampler.gamma: expected a finite number", 38),
        Case("absurd_int", _sub(TOY, "burn_in: 100", f"burn_in: {big_int}"), "less than or equal to 1000000", 42),
        Case("absurd_int_digits", _sub(TOY, "seed: 0", "seed: " + "9" * 5000), "number with 5000 characters", 9),
        Case("absurd_hidden", _sub(TOY, "hidden: [16]", f"hidden: [{big_int}]"), "model.hidden.0", 21),
        Case(
            "absurd_items", _sub(TOY, "branching: [2, 2, 2]", "branching: [16, 16, 16]"), "4096 items; at most 1024", 12
        ),
        Case(
            "class_pairs",
            _sub(INDUCTION, "[induction, formatting]]", "[induction, formating]]"),
            "did you mean 'formatting'",
            70,
        ),
        Case(
            "empty_steps",
            _sub(INDUCTION, steps, "steps: []"),
            "training.checkpoints.steps: List should have at least 1",
            30,
        ),
        Case("long_name", _sub(TOY, "name: toy_hierarchy", "name: " + "n" * 500_000), "at most 128 characters", 5),
        Case(
            "long_title",
            _sub(TOY, "title: Stagewise", "title: " + "t" * 300 + " Stagewise"),
            "title: String should have at most 256",
            6,
        ),
        Case("pairs", _sub(TOY, "[dog, lily]]", "[dog, lilly]]"), "report.pairs.2.1: no sample 'lilly'", 65),
        Case("bad_timestamp", _sub(TOY, "seed: 0", "seed: 2024-13-45"), "cannot read '2024-13-45' as a timestamp", 9),
        Case("set_tag", _sub(TOY, "seed: 0", "seed: !!set {a, b}"), "YAML tag", 9),
        Case("python_tag", _sub(TOY, "seed: 0", "seed: !!python/object/apply:os.system [ls]"), "YAML tag", 9),
        Case("two_documents", (TOY + "---\nname: other\n").encode(), "a second YAML document", 66),
        Case(
            "regex_nested",
            _sub(
                INDUCTION,
                "  induction: true",
                "  rules:\n    r: {kind: regex, pattern: '" + "(" * 499 + ")" * 499 + "'}",
            ),
            "nested too deeply",
            53,
        ),
        Case(
            "key_with_newline", _sub(TOY, "seed: 0", '"se\\ned": 0'), "se\\ned: unknown field; did you mean 'seed'?", 9
        ),
    ]


def _sections(n: int) -> bytes:
    """n report sections whose x names no column: n problems, DuckDB binding each (one connection)."""
    body = "".join(
        f"    - title: t{i}\n      sql: SELECT step AS a{i} FROM checkpoints\n      x: b\n" for i in range(n)
    )
    return (TINY_SPEC + "report:\n  sections:\n" + body).encode()


def _left_out(n: int) -> bytes:
    """A 1024-item hierarchy and a loo analysis leaving out n samples that do not exist (n messages listing items)."""
    text = TINY_SPEC.replace("branching: [2, 2]", "branching: [4, 4, 4, 4, 4]")
    text = text.replace("features_per_level: [2, 2, 1]", "features_per_level: [1, 1, 1, 1, 1, 1]")
    return (text + f"  - kind: loo\n    left_out: [{', '.join(f'z{i}' for i in range(n))}]\n").encode()


TINY_LINES = TINY_SPEC.count("\n")
CASES = hostile_cases() + [
    Case("sections_100", _sections(100), "report.sections.0.x: no column 'b' in the query", TINY_LINES + 5),
    Case("left_out_1024", _left_out(1024), "analyses.4.left_out.0: no training sample 'z0'", TINY_LINES + 2),
]
SET_CASES = [  # (overrides, expected substring): refused with file:--set
    (["training.lr=true"], "training.lr: expected a number, not true/false"),
    (["x=[&a [1, 2], *a]"], "YAML alias '*a'"),
    (["name.first=1"], "name holds 'toy_hierarchy', not a mapping or a list"),
    (["sampler.chains=" + "[" * 200 + "]" * 200], "levels deep"),
    (["sampler={chains: 1, chains: 2}"], "given twice"),
    (["report.pairs.0.0=zebra"], "no sample 'zebra'"),
    (["title=a\x1bb"], "control character U+001B"),
    (["sampler.eps"], "expected FIELD.PATH=VALUE"),
]


# ----------------------------------------------------------------------------- mutations

SCALARS = [
    "true",
    "false",
    "null",
    "~",
    "yes",
    "0",
    "-1",
    "3.0",
    "1e-5",
    "'1e-5'",
    ".nan",
    "-.inf",
    "1e999",
    "1180591620717411303424",
    "9" * 60,
    "0x7fffffffffffffffffff",
    "1:2:3",
    "2024-13-45",
    "2024-01-01",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: 1, a: 2}",
    "'x'",
    '"\\x1b[2J"',
    '"\\u202e"',
    "é",
    "*alias",
    "&anchor v",
    "!!set {a}",
    "!!binary aGk=",
    "!!float x",
    "<<",
    "[",
    "{",
    "'",
    '"',
    "|",
    ">",
    "-",
    "?",
    ":",
    "#",
    "%YAML 1.1",
    "x" * 300,
]
CHARS = ["\x00", "\x07", "\t", "\x0b", "\x1b", "\x7f", "\x85", "\u2028", "\u202e", "\ufeff", "\ufffe", "é", "😀", "\r"]


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


@st.composite
def _mutate(draw, data: bytes) -> bytes:
    kind = draw(
        st.sampled_from(
            ["flip", "delete", "duplicate", "truncate", "swap", "nest", "alias", "char", "indent", "insert_key"]
        )
    )
    lines = _lines(data)
    i = draw(st.integers(0, max(len(lines) - 1, 0)))
    if kind == "flip" and data:
        pos = draw(st.integers(0, len(data) - 1))
        return data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1 :]
    if kind == "delete":
        return b"\n".join(lines[:i] + lines[i + 1 :])
    if kind == "duplicate":
        return b"\n".join(lines[: i + 1] + lines[i:])
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "swap" and b": " in lines[i]:
        key = lines[i].split(b": ", 1)[0]
        return b"\n".join([*lines[:i], key + b": " + draw(st.sampled_from(SCALARS)).encode(), *lines[i + 1 :]])
    if kind == "nest":
        depth = draw(st.integers(1, 300))
        value = draw(st.sampled_from(["[" * depth + "]" * depth, "{a: " * depth + "1" + "}" * depth]))
        key = lines[i].split(b":", 1)[0] if b":" in lines[i] else b"x"
        return b"\n".join([*lines[:i], key + b": " + value.encode(), *lines[i + 1 :]])
    if kind == "alias":
        j = draw(st.integers(0, max(len(lines) - 1, 0)))
        out = list(lines)
        if b": " in out[i]:
            k, v = out[i].split(b": ", 1)
            out[i] = k + b": &a " + v
        if b": " in out[j]:
            out[j] = out[j].split(b": ", 1)[0] + b": *a"
        return b"\n".join(out)
    if kind == "char" and data:
        pos = draw(st.integers(0, len(data)))
        return data[:pos] + draw(st.sampled_from(CHARS)).encode("utf-8", "surrogatepass") + data[pos:]
    if kind == "indent":
        shift = draw(st.sampled_from([b" ", b"  ", b"\t"]))
        if draw(st.booleans()):
            return b"\n".join([*lines[:i], shift + lines[i], *lines[i + 1 :]])
        return b"\n".join([*lines[:i], lines[i].removeprefix(b"  "), *lines[i + 1 :]])
    if kind == "insert_key":
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        key = draw(st.sampled_from(["seed", "name", "eps", "kind", "steps", "x", "1", "null", "'a\\nb'"]))
        value = draw(st.sampled_from(SCALARS))
        return b"\n".join([*lines[:i], indent + f"{key}: {value}".encode(), *lines[i:]])
    return data


@st.composite
def mutated(draw, bases: dict[str, str] = BASES) -> tuple[str, bytes]:
    """(base name, the base spec damaged by 1-4 mutations)."""
    name = draw(st.sampled_from(sorted(bases)))
    data = bases[name].encode()
    for _ in range(draw(st.integers(1, 4))):
        data = draw(_mutate(data))
    return name, data


def write(tmp: Path, data: bytes, name: str = "spec.yaml") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path

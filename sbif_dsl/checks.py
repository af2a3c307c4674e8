"""Checks of a loaded spec that need more than the DSL: report sections' SQL against the views' schema.

The spec package runs nothing; this runs DuckDB (on an empty in-memory schema) and is called by every command
that takes a spec, right after loading it.
"""

from __future__ import annotations

from .errors import SpecError
from .spec import LoadedSpec, load_spec
from .spec.loader import Path_, ref_lines


def section_problems(study) -> list[tuple[Path_, str]]:
    """Report sections: the SQL must run against the views and the encodings must name its columns."""
    import duckdb

    from .store.views import sql_columns, view_docs

    problems: list[tuple[Path_, str]] = []
    for i, sec in enumerate(study.report.sections):
        try:
            columns = sql_columns(sec.sql)
        except duckdb.Error as e:
            msg = str(e).splitlines()[0]
            problems.append(((("report", "sections", i, "sql")), f"{msg}; views: {', '.join(view_docs())}"))
            continue
        for channel in ("x", "y", "color"):
            col = getattr(sec, channel)
            if col is not None and col.split(":")[0] not in columns:
                problems.append(
                    (
                        ("report", "sections", i, channel),
                        f"no column {col!r} in the query; columns: {', '.join(columns)}",
                    )
                )
        if sec.chart != "table" and (sec.x is None or sec.y is None):
            problems.append((("report", "sections", i, "chart"), f"a {sec.chart} chart needs x and y"))
    return problems


def load_checked(path, overrides: list[str] | None = None) -> LoadedSpec:
    """`load_spec` plus the report-section checks: what the CLI loads."""
    spec = load_spec(path, overrides)
    problems = section_problems(spec.study)
    if problems:
        from .spec.loader import _parse_yaml

        _, lines = _parse_yaml(spec.text, str(path))
        raise SpecError(ref_lines(problems, lines, str(path)))
    return spec

"""Checks of a loaded spec that need more than the DSL: report sections' SQL against the views' schema.

The spec package runs nothing; this runs DuckDB (on an empty in-memory schema) and is called by every command
that takes a spec, right after loading it. One connection serves every section, and it has no file or network
access (DESCRIBE binds a query without running it, but binding `read_csv('/dev/stdin')` would read): a section
that reads files is left to be checked when the report runs.
"""

from __future__ import annotations

from .errors import SpecError
from .spec import LoadedSpec, load_spec
from .spec.loader import Path_, _capped, ref_lines

NO_FILES = "operations are disabled by configuration"  # DuckDB's message when a query needs file/network access


def _schema_connection(empty_dir):
    """An in-memory DuckDB with the store's tables (empty) and the views, without external access."""
    from pathlib import Path

    import duckdb

    from .store.schema import tables_ddl
    from .store.views import create_views

    con = duckdb.connect(":memory:", config={"enable_external_access": False})
    con.execute(tables_ddl())
    create_views(con, Path(empty_dir))
    return con


def section_problems(study) -> list[tuple[Path_, str]]:
    """Report sections: the SQL must run against the views and the encodings must name its columns."""
    if not study.report.sections:
        return []
    import tempfile

    import duckdb

    from .store.views import view_docs

    problems: list[tuple[Path_, str]] = []
    with tempfile.TemporaryDirectory() as empty, _schema_connection(empty) as con:
        for i, sec in enumerate(study.report.sections):
            try:
                n = len(con.extract_statements(sec.sql))
                if n != 1:  # execute() would run every statement after the DESCRIBE
                    problems.append(
                        (("report", "sections", i, "sql"), f"expected one SELECT query, got {n} statements")
                    )
                    continue
                columns = [row[0] for row in con.execute(f"DESCRIBE {sec.sql}").fetchall()]
            except duckdb.Error as e:
                msg = str(e).splitlines()[0]
                if NO_FILES not in msg:
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
        raise SpecError(_capped(ref_lines(problems, spec.lines, str(path))))
    return spec

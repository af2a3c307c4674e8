"""The stable SQL surface: views with readable columns (study, step, sample names), never internal hashes.

Each stage kind declares its views (stages/kinds.py); here they are scoped to a study and created. They are TEMP
views created on every connection, so they work on read-only connections and pick up the trace files present at
query time. Views only select and join: statistics are computed in stages, so every view is bitwise reproducible.
"""

from __future__ import annotations

from pathlib import Path

# Each stage of a study, with the study's name and the analysis name it gives the stage; the join that scopes every
# other view to a study (`{scope}` in a kind's view SQL).
SCOPE = "study_scope ss JOIN stage_registry sr ON sr.key = ss.key"

STORE_VIEWS: dict[str, tuple[str, str]] = {
    "studies": (
        "SELECT study, title, description, spec_path, spec_hash, spec_yaml, seed, updated_at FROM study_registry",
        "one row per study: title, spec text and hash, seed",
    ),
    "stages": (
        """
        SELECT ss.study, sr.key, sr.kind, sr.step, ss.analysis, sr.label, 'complete' AS status, sr.created_at,
               sr.wall_s, sr.device, sr.seed,
               json_extract_string(sr.provenance, '$.sbif_dsl') AS sbif_version,
               json_extract_string(sr.provenance, '$.torch') AS torch_version,
               json_extract_string(sr.provenance, '$.python') AS python_version,
               json_extract_string(sr.provenance, '$.host') AS host,
               json_extract_string(sr.provenance, '$.node_ip') AS node_ip,
               TRY_CAST(json_extract_string(sr.provenance, '$.threads') AS INTEGER) AS threads
        FROM {scope}""",
        "every stage of every study: kind, checkpoint step, wall time, versions, seed, and where it ran "
        "(device, host, Ray node_ip, CPU threads)",
    ),
    "sweep": (
        "SELECT sweep, study, cell, position, axis, path, value, value_num FROM sweep_cells",
        "one row per sweep cell and axis field: the cell's study (join any view on study), the field's position in "
        "the sweep block, short name and dotted path, its value as text and as a number (NULL unless numeric)",
    ),
}
LOSS_TRACES_DOC = (
    "loss of every tracked sample (token position `pos`, 0 for per-sample losses) at every draw (DOUBLE; stored at "
    "the study's dtype)"
)


def view_sql() -> dict[str, str]:
    """name -> SQL of every view but loss_traces (which reads artifact files), in kind order."""
    from ..stages.kinds import KINDS

    sql = {name: text for name, (text, _) in STORE_VIEWS.items()}
    sql.update({v.name: v.sql for kind in KINDS for v in kind.views})
    return {name: text.replace("{scope}", SCOPE) for name, text in sql.items()}


def view_docs() -> dict[str, str]:
    """name -> one line of documentation, for `sbif views`, the README and error hints."""
    from ..stages.kinds import KINDS

    docs = {name: doc for name, (_, doc) in STORE_VIEWS.items()}
    docs.update({v.name: v.doc for kind in KINDS for v in kind.views})
    docs["loss_traces"] = LOSS_TRACES_DOC
    return docs


def traces_view_sql(objects_dir: Path) -> str:
    """Trace files are Parquet artifacts named objects/<kk>/<key>/traces.parquet."""
    files = list(objects_dir.glob("*/*/traces.parquet"))
    if not files:
        return """SELECT NULL::VARCHAR AS study, NULL::BIGINT AS step, NULL::VARCHAR AS observable,
                  NULL::INTEGER AS sample_idx, NULL::VARCHAR AS sample_name, NULL::INTEGER AS pos,
                  NULL::INTEGER AS chain, NULL::INTEGER AS draw, NULL::DOUBLE AS loss WHERE false"""
    pattern = str(objects_dir / "*" / "*" / "traces.parquet").replace("'", "''")
    # objects/<kk>/<key>[.g<n>]/traces.parquet; only the generation the registry holds (a replaced one may linger).
    # Losses are float32 or float64 (the study's dtype): union_by_name widens, so no file's are cast to the first's.
    return f"""
        SELECT ss.study, sr.step, t.observable, t.sample_idx, k.sample_name, t.pos, t.chain, t.draw,
               t.loss::DOUBLE AS loss
        FROM read_parquet('{pattern}', filename = true, union_by_name = true) t
        JOIN {SCOPE} ON sr.key = split_part(split_part(replace(t.filename, '\\', '/'), '/', -2), '.', 1)
        JOIN artifacts a ON a.key = sr.key AND a.name = 'traces.parquet'
                        AND ends_with('/' || replace(t.filename, '\\', '/'), '/' || a.relpath)
        JOIN r_tracked k ON k.key = sr.key AND k.observable = t.observable AND k.sample_idx = t.sample_idx"""


def _temp_missing_tables(con) -> None:
    """A cache written by an older version lacks newer r_* tables, and newer columns of its tables, until its next
    write (`schema.migrate`): give a (read-only) connection empty TEMP stand-ins for the tables, and TEMP views
    over the tables that add the missing columns as NULL, so every view exists and shows NULL where the old
    version wrote nothing."""
    from .schema import LATER_REGISTRY, result_tables

    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()}
    ddl = {**LATER_REGISTRY, **{t.name: t.ddl for t in result_tables()}}
    for name, text in ddl.items():
        if name not in have:
            con.execute(text.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE IF NOT EXISTS", 1))
    columns: dict[str, set[str]] = {}
    sql = (
        "SELECT table_name, column_name FROM duckdb_columns() "
        "WHERE NOT internal AND schema_name = 'main' AND database_name = current_database()"
    )
    for table, column in con.execute(sql).fetchall():
        columns.setdefault(table, set()).add(column)
    db = con.execute("SELECT current_database()").fetchone()[0]
    for t in result_tables():
        missing = [(c, typ) for c, typ in t.column_types() if t.name in have and c not in columns.get(t.name, ())]
        if missing:
            extra = ", ".join(f"NULL::{typ} AS {c}" for c, typ in missing)
            con.execute(f'CREATE OR REPLACE TEMP VIEW {t.name} AS SELECT *, {extra} FROM "{db}".main.{t.name}')


def _study_scope(con) -> str:
    """study_stages with the analysis name; a cache from before that column takes the registry's name."""
    found = con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'study_stages'").fetchall()
    cols = {r[0] for r in found}
    if "analysis" in cols:
        return "SELECT study, key, analysis FROM study_stages"
    return "SELECT s.study, s.key, r.analysis FROM study_stages s JOIN stage_registry r ON r.key = s.key"


def create_views(con, objects_dir: Path, extra: dict[str, str] | None = None) -> None:
    _temp_missing_tables(con)
    con.execute(f"CREATE OR REPLACE TEMP VIEW study_scope AS {_study_scope(con)}")
    for name, sql in {**view_sql(), **(extra or {})}.items():
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW loss_traces AS {traces_view_sql(objects_dir)}")


def sql_columns(sql: str) -> list[str]:
    """Columns a query over the views returns, checked against an empty in-memory schema (no cache needed).

    Raises duckdb.Error with DuckDB's message when the SQL is invalid or names unknown views/columns.
    """
    import tempfile

    import duckdb

    from .schema import tables_ddl

    with duckdb.connect(":memory:") as con, tempfile.TemporaryDirectory() as empty:
        con.execute(tables_ddl())
        create_views(con, Path(empty))
        return [row[0] for row in con.execute(f"DESCRIBE {sql}").fetchall()]

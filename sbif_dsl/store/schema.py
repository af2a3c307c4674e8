"""DuckDB tables of the cache: the registry (here) and every stage kind's result tables (declared by the kinds,
stages/kinds.py). Result tables (r_*) carry the key of the stage that wrote them."""

from __future__ import annotations

SCHEMA_VERSION = 1

REGISTRY = """
CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS stage_registry (
    key VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    step BIGINT,
    analysis VARCHAR,
    parent VARCHAR,
    label VARCHAR,
    fields JSON,
    inputs JSON,
    provenance JSON,
    device VARCHAR,
    seed BIGINT,
    wall_s DOUBLE,
    created_at TIMESTAMP NOT NULL
);
-- mtime_ns: the file's modification time at commit (a cheap check that it was not rewritten since)
CREATE TABLE IF NOT EXISTS artifacts (
    key VARCHAR NOT NULL, name VARCHAR NOT NULL, relpath VARCHAR NOT NULL, sha256 VARCHAR NOT NULL,
    bytes BIGINT NOT NULL, mtime_ns BIGINT, PRIMARY KEY (key, name)
);
CREATE TABLE IF NOT EXISTS study_registry (
    study VARCHAR PRIMARY KEY, title VARCHAR, description VARCHAR, spec_path VARCHAR, spec_hash VARCHAR,
    spec_yaml VARCHAR, seed BIGINT, updated_at TIMESTAMP
);
-- a plan's stages by the plan's fingerprint (plan.fingerprint): an unchanged re-run needs no data or model
CREATE TABLE IF NOT EXISTS plans (fingerprint VARCHAR PRIMARY KEY, stages JSON, created_at TIMESTAMP);
-- analysis: the name under which the study's spec refers to the stage (names are not part of keys)
CREATE TABLE IF NOT EXISTS study_stages (
    study VARCHAR NOT NULL, key VARCHAR NOT NULL, analysis VARCHAR, PRIMARY KEY (study, key)
);
"""
# Newer registry tables, which an older cache opened read-only lacks (views.py gives it empty TEMP stand-ins).
# sweep_cells: the current cells of each sweep, one row per cell and axis field (position: the field's order in the
# sweep block; value as text, and as a number when it is one)
LATER_REGISTRY = {
    "sweep_cells": """CREATE TABLE IF NOT EXISTS sweep_cells (
    sweep VARCHAR NOT NULL, study VARCHAR NOT NULL, cell INTEGER NOT NULL, position INTEGER NOT NULL,
    axis VARCHAR NOT NULL, path VARCHAR NOT NULL, value VARCHAR, value_num DOUBLE, PRIMARY KEY (sweep, study, path)
)""",
}
REGISTRY += "".join(ddl + ";\n" for ddl in LATER_REGISTRY.values())


def result_tables() -> list:
    """Every kind's result tables (`stages.kind.Table`), in kind order."""
    from ..stages.kinds import KINDS

    return [t for kind in KINDS for t in kind.tables]


def tables_ddl() -> str:
    return REGISTRY + "".join(t.ddl + ";\n" for t in result_tables())


def migrate(con) -> None:
    """Bring an older cache's tables up to the declared ones: study_stages gains the analysis name (empty for old
    rows: their views fall back to the registry's name, see store/views.py) and every result table gains the
    columns its kind declares since (NULL in old rows; the kind's version bump recomputes those stages)."""
    con.execute("ALTER TABLE study_stages ADD COLUMN IF NOT EXISTS analysis VARCHAR")
    con.execute("ALTER TABLE artifacts ADD COLUMN IF NOT EXISTS mtime_ns BIGINT")
    for t in result_tables():
        for name, sql_type in t.column_types():
            con.execute(f"ALTER TABLE {t.name} ADD COLUMN IF NOT EXISTS {name} {sql_type}")

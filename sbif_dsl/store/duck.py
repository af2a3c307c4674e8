"""The cache: one DuckDB file for the registry and tabular results, artifact files under objects/ by key.

A stage becomes visible only when its rows, its artifact checksums and its registry row commit in one
transaction; artifacts are written to a temp name and renamed first, so a killed run leaves only
invisible orphans (removed by `gc`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import CacheLockedError, SbifError
from ..hashing import file_sha256
from ..stages.base import StageOutput
from .schema import SCHEMA_VERSION, migrate, result_tables, tables_ddl
from .views import create_views

DEFAULT_CACHE = Path("cache/sbif.duckdb")


def default_cache_path() -> Path:
    return Path(os.environ.get("SBIF_CACHE", DEFAULT_CACHE))


@dataclass
class StageRecord:
    """What the registry keeps about one stage."""

    key: str
    kind: str
    version: int
    fields: dict
    inputs: list[str]
    step: int | None = None
    analysis: str | None = None
    parent: str | None = None
    label: str = ""
    provenance: dict = field(default_factory=dict)
    device: str | None = None
    seed: int | None = None
    wall_s: float | None = None


class Store:
    def __init__(self, db_path: str | Path | None = None):
        self.db_path = Path(db_path) if db_path is not None else default_cache_path()
        self.root = self.db_path.parent
        self.objects = self.root / "objects"
        self.lock_path = self.db_path.with_name(self.db_path.name + ".lock")
        self._held: duckdb.DuckDBPyConnection | None = None

    # ------------------------------------------------------------------ connections

    @contextmanager
    def connect(self, read_only: bool = False, views: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection that is always closed; read-only ones retry while a writer briefly holds the file.
        Inside `held()` it is a cursor of the held connection."""
        if self._held is not None:
            cursor = self._held.cursor()
            try:
                if views:
                    create_views(cursor, self.objects)
                yield cursor
            finally:
                cursor.close()
            return
        if read_only and not self.db_path.exists():
            self.init()
        con = self._open(read_only)
        try:
            if views:
                create_views(con, self.objects)
            yield con
        finally:
            con.close()

    @contextmanager
    def held(self) -> Iterator[None]:
        """One read-write connection for a burst of operations (a unit's commit and the next submissions): opening
        DuckDB costs ~20 ms here. The executor never holds it while a stage runs, so other processes (a query, a
        report) can open the cache between bursts, as between commits."""
        if self._held is not None:
            yield
            return
        self._held = self._open(read_only=False)
        try:
            yield
        finally:
            self._held.close()
            self._held = None

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        delay = 0.05
        for attempt in range(40):
            try:
                return duckdb.connect(str(self.db_path), read_only=read_only)
            except duckdb.IOException as e:
                if "lock" not in str(e).lower() or attempt == 39:
                    raise SbifError(f"cannot open cache {self.db_path}: {e}") from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
        raise AssertionError("unreachable")

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)
        con = self._open(read_only=False)
        try:
            con.execute(tables_ddl())
            migrate(con)
            row = con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            elif int(row[0]) != SCHEMA_VERSION:
                raise SbifError(
                    f"cache {self.db_path} has schema version {row[0]}, this sbif_dsl needs {SCHEMA_VERSION}; "
                    "hint: use a new --cache path"
                )
        finally:
            con.close()

    # ------------------------------------------------------------------ single writer

    @contextmanager
    def writer(self, wait_s: float = 0.0) -> Iterator[None]:
        """Exclusive write lock across processes; the second writer waits up to wait_s, then says who holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                        raise CacheLockedError(
                            f"cache {self.db_path} is being written by another sbif process (pid {holder}); "
                            "hint: wait for it (--wait SECONDS) or use another --cache"
                        ) from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self.init()
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # ------------------------------------------------------------------ artifacts

    def staging_dir(self, key: str) -> Path:
        """Where a running stage writes its artifacts before commit (never read by anything else)."""
        d = self.objects / ".staging" / f"{key}-{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def artifact_path(self, key: str, name: str) -> Path:
        return self.objects / key[:2] / key / name

    def artifact(self, key: str, name: str, verify: bool = False) -> Path:
        with self.connect(read_only=True, views=False) as con:
            row = con.execute(
                "SELECT relpath, sha256 FROM artifacts WHERE key = ? AND name = ?", [key, name]
            ).fetchone()
        if row is None:
            raise SbifError(f"artifact {name!r} of stage {key[:12]} is not in the cache")
        path = self.root / row[0]
        if not path.exists():
            raise SbifError(f"artifact file {path} is missing; hint: run `sbif cache verify` then re-run")
        if verify and file_sha256(path) != row[1]:
            raise SbifError(f"artifact file {path} fails its checksum; hint: run `sbif cache verify --fix`")
        return path

    def artifact_files(self, keys: list[str]) -> dict[str, dict[str, Path]]:
        """key -> {artifact name: file} of committed stages, each file checked against its checksum: what a stage
        that declares these keys as inputs reads (a corrupt or missing file is an error here, never a silently
        wrong input)."""
        if not keys:
            return {}
        with self.connect(read_only=True, views=False) as con:
            con.execute("CREATE TEMP TABLE want (key VARCHAR)")
            con.executemany("INSERT INTO want VALUES (?)", [[k] for k in keys])
            registry = con.execute("SELECT key FROM stage_registry WHERE key IN (SELECT key FROM want)").fetchall()
            known = {r[0] for r in registry}
            rows = con.execute(
                "SELECT key, name, relpath, sha256 FROM artifacts WHERE key IN (SELECT key FROM want)"
            ).fetchall()
        missing = [k for k in keys if k not in known]
        if missing:
            raise SbifError(f"internal: input stage {missing[0][:12]} is not in the cache")
        out: dict[str, dict[str, Path]] = {k: {} for k in keys}
        for key, name, rel, digest in rows:
            path = self.root / rel
            if not path.exists() or file_sha256(path) != digest:
                raise SbifError(
                    f"artifact file {path} is missing or fails its checksum; hint: run `sbif cache verify --fix`, "
                    "then run again to recompute it"
                )
            out[key][name] = path
        return out

    def lineage_checkpoints(self, lineage: str) -> list[tuple[str, int]]:
        """(key, step) of every complete checkpoint of a training lineage, by step (where training can resume)."""
        if not self.db_path.exists():
            return []
        with self.connect(read_only=True, views=False) as con:
            rows = con.execute(
                """SELECT c.key, c.step FROM r_checkpoints c JOIN stage_registry s ON s.key = c.key
                   WHERE c.lineage = ? ORDER BY c.step""",
                [lineage],
            ).fetchall()
        done = self.complete_keys([k for k, _ in rows])
        return [(k, int(step)) for k, step in rows if k in done]

    def add_to_study(self, study: str, keys: list[str]) -> None:
        """Add stages to a study's references without dropping the ones it has (calibration grids accumulate)."""
        with self.connect(views=False) as con:
            con.executemany(
                "INSERT OR IGNORE INTO study_stages VALUES (?, ?, NULL)", [[study, k] for k in sorted(set(keys))]
            )

    def rows(self, table: str, keys: list[str], columns: list[str]) -> dict[str, dict]:
        """key -> {column: value} of a result table with one row per stage (a stage's summary row)."""
        if table not in {t.name for t in result_tables()}:
            raise SbifError(f"internal: unknown result table {table}")
        with self.connect(read_only=True, views=False) as con:
            found = con.execute(
                f"SELECT key, {', '.join(columns)} FROM {table} WHERE list_contains(?, key)", [list(keys)]
            ).fetchall()
        return {r[0]: dict(zip(columns, r[1:], strict=True)) for r in found}

    # ------------------------------------------------------------------ registry

    def complete_keys(self, keys: list[str]) -> set[str]:
        """Keys whose stage committed and whose artifact files are still present."""
        if not self.db_path.exists() or not keys:
            return set()
        with self.connect(read_only=True, views=False) as con:
            con.execute("CREATE TEMP TABLE want (key VARCHAR)")
            con.executemany("INSERT INTO want VALUES (?)", [[k] for k in keys])
            done = {
                r[0]
                for r in con.execute("SELECT key FROM stage_registry WHERE key IN (SELECT key FROM want)").fetchall()
            }
            arts = con.execute("SELECT key, relpath FROM artifacts WHERE key IN (SELECT key FROM want)").fetchall()
        for key, rel in arts:
            if key in done and not (self.root / rel).exists():
                done.discard(key)
        return done

    def commit(self, rec: StageRecord, out: StageOutput) -> None:
        self.commit_all([(rec, out)])

    def commit_all(self, stages: list[tuple[StageRecord, StageOutput]]) -> None:
        """Make stages visible, one transaction each, over one connection: a stage's artifacts are moved into place,
        then its rows + checksums + registry row commit together."""
        with self.connect(views=False) as con:
            for rec, out in stages:
                self._commit(con, rec, out)

    def _commit(self, con, rec: StageRecord, out: StageOutput) -> None:
        known = {t.name for t in result_tables()}
        art_rows = []
        for name, tmp in out.artifacts.items():
            final = self.artifact_path(rec.key, name)
            final.parent.mkdir(parents=True, exist_ok=True)
            digest, size = file_sha256(tmp), tmp.stat().st_size
            os.replace(tmp, final)
            art_rows.append([rec.key, name, str(final.relative_to(self.root)), digest, size])
        con.execute("BEGIN TRANSACTION")
        try:
            # rows of a key exist only with its registry row (they commit together): replace them on a recompute
            if con.execute("SELECT 1 FROM stage_registry WHERE key = ?", [rec.key]).fetchone() is not None:
                self._delete_key(con, rec.key)
            for table, columns in out.tables.items():
                if table not in known:
                    raise SbifError(f"internal: unknown result table {table}")
                n = len(next(iter(columns.values()))) if columns else 0
                if n == 0:
                    continue
                arrow = pa.table(
                    {
                        "key": [rec.key] * n,
                        **{c: v if _is_array(v) else list(v) for c, v in columns.items()},
                    }
                )
                con.register("incoming", arrow)
                cols = ", ".join(arrow.column_names)
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM incoming")
                con.unregister("incoming")
            if art_rows:
                con.executemany("INSERT INTO artifacts VALUES (?, ?, ?, ?, ?)", art_rows)
            con.execute(
                "INSERT INTO stage_registry VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    rec.key,
                    rec.kind,
                    rec.version,
                    rec.step,
                    rec.analysis,
                    rec.parent,
                    rec.label,
                    json.dumps(rec.fields, sort_keys=True),
                    json.dumps(rec.inputs),
                    json.dumps(rec.provenance, sort_keys=True),
                    rec.device,
                    rec.seed,
                    rec.wall_s,
                    datetime.now(UTC).replace(tzinfo=None),
                ],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        staging = out.artifacts and next(iter(out.artifacts.values())).parent
        if staging and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _delete_key(con, key: str) -> None:
        for table in (t.name for t in result_tables()):
            con.execute(f"DELETE FROM {table} WHERE key = ?", [key])
        con.execute("DELETE FROM artifacts WHERE key = ?", [key])
        con.execute("DELETE FROM stage_registry WHERE key = ?", [key])

    def set_study(self, study: str, stages: dict[str, str | None], info: dict) -> None:
        """Record which stages a study's current spec references (what views show and gc keeps): key -> the name of
        the analysis the stage computes for this study (None for other stages)."""
        with self.connect(views=False) as con:
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM study_stages WHERE study = ?", [study])
            con.executemany(
                "INSERT INTO study_stages VALUES (?, ?, ?)", [[study, k, stages[k]] for k in sorted(stages)]
            )
            con.execute("DELETE FROM study_registry WHERE study = ?", [study])
            con.execute(
                "INSERT INTO study_registry VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    study,
                    info.get("title"),
                    info.get("description"),
                    info.get("spec_path"),
                    info.get("spec_hash"),
                    info.get("spec_yaml"),
                    info.get("seed"),
                    datetime.now(UTC).replace(tzinfo=None),
                ],
            )
            con.execute("COMMIT")

    # ------------------------------------------------------------------ maintenance

    def list_stages(self) -> list[tuple]:
        with self.connect(read_only=True, views=False) as con:
            return con.execute(
                """SELECT sr.key, sr.kind, sr.step, sr.label, sr.wall_s, sr.created_at,
                          coalesce(sum(a.bytes), 0) AS bytes,
                          (SELECT string_agg(study, ',') FROM study_stages s WHERE s.key = sr.key) AS studies
                   FROM stage_registry sr LEFT JOIN artifacts a ON a.key = sr.key
                   GROUP BY ALL ORDER BY sr.created_at"""
            ).fetchall()

    def gc(self, older_than: timedelta | None = None, dry_run: bool = False) -> list[str]:
        """Drop stages no study references (or, with older_than, any stage older than that) and orphan files."""
        with self.connect(views=False) as con:
            query = "SELECT key FROM stage_registry WHERE key NOT IN (SELECT key FROM study_stages)"
            params: list[Any] = []
            if older_than is not None:
                query += " OR created_at < ?"
                params.append(datetime.now(UTC).replace(tzinfo=None) - older_than)
            doomed = [r[0] for r in con.execute(query, params).fetchall()]
            if not dry_run:
                con.execute("BEGIN TRANSACTION")
                for key in doomed:
                    self._delete_key(con, key)
                    con.execute("DELETE FROM study_stages WHERE key = ?", [key])
                con.execute("COMMIT")
            live = {r[0] for r in con.execute("SELECT relpath FROM artifacts").fetchall()}
        if not dry_run:
            for path in self.objects.glob("*/*/*"):  # objects/<kk>/<key>/<name>; staging is removed below
                if path.parts[-3] != ".staging" and str(path.relative_to(self.root)) not in live:
                    path.unlink(missing_ok=True)
            for d in list(self.objects.glob("*/*")) + list(self.objects.glob("*")):
                if d.is_dir() and d.name != ".staging" and not any(d.iterdir()):
                    d.rmdir()
            shutil.rmtree(self.objects / ".staging", ignore_errors=True)
            with self.connect(views=False) as con:
                con.execute("CHECKPOINT")
        return doomed

    def verify(self, fix: bool = False) -> list[str]:
        """Check every artifact's checksum; with fix, drop stages whose files are missing or corrupt."""
        with self.connect(read_only=not fix, views=False) as con:
            rows = con.execute("SELECT key, relpath, sha256 FROM artifacts").fetchall()
        bad = sorted(
            {k for k, rel, digest in rows if not (self.root / rel).exists() or file_sha256(self.root / rel) != digest}
        )
        if fix and bad:
            with self.connect(views=False) as con:
                con.execute("BEGIN TRANSACTION")
                for key in bad:
                    self._delete_key(con, key)
                con.execute("COMMIT")
        return bad


def _is_array(v) -> bool:
    """Columns given as NumPy or Arrow arrays go to Arrow as they are (Arrow arrays keep their nulls)."""
    return hasattr(v, "dtype") or isinstance(v, pa.Array)


def fetch_frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """Run SQL and return a Polars DataFrame (via Arrow; DuckDB 2 has no connection-level .pl())."""
    import polars as pl

    rel = con.sql(sql, params=params or None)
    return pl.DataFrame() if rel is None else pl.from_arrow(rel.to_arrow_table())

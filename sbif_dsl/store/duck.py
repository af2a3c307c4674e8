"""The cache: one DuckDB file for the registry and tabular results, artifact files in its own objects folder.

A cache `cache/sbif.duckdb` keeps its artifacts in `cache/sbif.objects/<kk>/<key>/` (no other database writes
there, so `gc` can remove what its registry does not own). Caches made before that layout keep their
`cache/objects/` (recorded in the meta table); `gc` leaves unregistered files there alone while another
database shares the folder.

A stage becomes visible only when its rows, its artifact checksums and its registry row commit in one
transaction; artifacts are written to a temp name and renamed first, so a killed run leaves only
invisible orphans (removed by `gc`).
"""

from __future__ import annotations

import contextlib
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
        self.objects = self.root / self._objects_name()
        self.lock_path = self.db_path.with_name(self.db_path.name + ".lock")
        self._held: duckdb.DuckDBPyConnection | None = None

    LEGACY_OBJECTS = "objects"

    def _objects_name(self) -> str:
        """This cache's objects folder (relative to its folder): recorded in its meta table; a new cache's is
        `<name>.objects`, a cache from before that layout (no record, artifacts under objects/) keeps objects/."""
        own = self.db_path.stem + ".objects"
        if not self.db_path.exists():
            return own
        try:
            with duckdb.connect(str(self.db_path), read_only=True) as con:
                row = con.execute("SELECT value FROM meta WHERE name = 'objects_dir'").fetchone()
                if row is not None:
                    return row[0]
                legacy = con.execute("SELECT count(*) FROM artifacts WHERE relpath LIKE 'objects/%'").fetchone()
                return self.LEGACY_OBJECTS if legacy[0] else own
        except duckdb.Error:  # a writer holds the file, or it has no tables yet: judge by the folders
            legacy_only = (self.root / self.LEGACY_OBJECTS).is_dir() and not (self.root / own).is_dir()
            return self.LEGACY_OBJECTS if legacy_only else own

    def sharing_objects(self) -> list[Path]:
        """Other caches in this folder that use the same (legacy) objects folder."""
        if self.objects.name != self.LEGACY_OBJECTS:
            return []
        return sorted(p for p in self.root.glob("*.duckdb") if p.resolve() != self.db_path.resolve())

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
            con.execute("INSERT OR IGNORE INTO meta VALUES ('objects_dir', ?)", [self.objects.name])
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

    def remember_plan(self, fingerprint: str, stages: list[list]) -> None:
        """Record a plan's stages ([key, kind, step, analysis, label] each) under its fingerprint."""
        with self.connect(views=False) as con:
            con.execute(
                "INSERT OR REPLACE INTO plans VALUES (?, ?, ?)",
                [fingerprint, json.dumps(stages), datetime.now(UTC).replace(tzinfo=None)],
            )

    def recall_plan(self, fingerprint: str) -> list[list] | None:
        """The stages recorded for a plan fingerprint, or None."""
        if not self.db_path.exists():
            return None
        with self.connect(read_only=True, views=False) as con:
            try:
                row = con.execute("SELECT stages FROM plans WHERE fingerprint = ?", [fingerprint]).fetchone()
            except duckdb.CatalogException:  # a cache from before plans were recorded
                return None
        return json.loads(row[0]) if row else None

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
        """Keys whose stage committed and whose artifact files are intact (see `_intact`): a missing, truncated or
        rewritten artifact makes its stage missing, so a run recomputes it."""
        return set(keys) - set(self.damaged(keys, registered_only=False))

    def damaged(self, keys: list[str], registered_only: bool = True) -> dict[str, str]:
        """key -> what is wrong (or "not in the cache", unless registered_only) for the given keys."""
        if not keys:
            return {}
        if not self.db_path.exists():
            return {} if registered_only else {k: "not in the cache" for k in keys}
        with self.connect(read_only=True, views=False) as con:
            con.execute("CREATE TEMP TABLE want (key VARCHAR)")
            con.executemany("INSERT INTO want VALUES (?)", [[k] for k in keys])
            done = {
                r[0]
                for r in con.execute("SELECT key FROM stage_registry WHERE key IN (SELECT key FROM want)").fetchall()
            }
            arts = con.execute(
                "SELECT key, name, relpath, sha256, bytes, mtime_ns FROM artifacts WHERE key IN (SELECT key FROM want)"
            ).fetchall()
        out = {} if registered_only else {k: "not in the cache" for k in keys if k not in done}
        for key, name, rel, digest, size, mtime_ns in arts:
            problem = self._intact(self.root / rel, digest, size, mtime_ns)
            if key in done and problem and key not in out:
                out[key] = f"artifact {name} {problem}"
        return out

    _verified: dict[tuple, bool] = {}  # (path, size, mtime_ns, inode, sha256) -> checksum matched, per process

    def _intact(self, path: Path, digest: str, size: int, mtime_ns: int | None) -> str | None:
        """None if the file is as committed, else what is wrong. Cheap: a file with its committed size and
        modification time is trusted (as git's index does); any other is hashed (once per process and state)."""
        try:
            st = path.stat()
        except OSError:
            return "is missing"
        if st.st_size != size:
            return f"has {st.st_size} bytes, not the {size} committed (truncated or rewritten)"
        if mtime_ns is not None and st.st_mtime_ns == mtime_ns:
            return None
        state = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, digest)
        if state not in self._verified:
            self._verified[state] = file_sha256(path) == digest
        return None if self._verified[state] else "fails its checksum (bytes changed since commit)"

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
        # A recompute writes into a new folder, so the committed files stay intact until the new ones commit.
        old = [r[0] for r in con.execute("SELECT relpath FROM artifacts WHERE key = ?", [rec.key]).fetchall()]
        folder = self._fresh_folder(rec.key) if old else self.objects / rec.key[:2] / rec.key
        art_rows = []
        for name, tmp in out.artifacts.items():
            final = folder / name
            final.parent.mkdir(parents=True, exist_ok=True)
            digest, size = file_sha256(tmp), tmp.stat().st_size
            os.replace(tmp, final)
            art_rows.append([rec.key, name, str(final.relative_to(self.root)), digest, size, final.stat().st_mtime_ns])
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
                con.executemany(
                    "INSERT INTO artifacts (key, name, relpath, sha256, bytes, mtime_ns) VALUES (?, ?, ?, ?, ?, ?)",
                    art_rows,
                )
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
            with contextlib.suppress(duckdb.Error):  # a failed COMMIT (disk full) has already rolled back
                con.execute("ROLLBACK")
            raise
        staging = out.artifacts and next(iter(out.artifacts.values())).parent
        if staging and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        for rel in set(old) - {r[2] for r in art_rows}:  # the replaced generation, now unreferenced
            (self.root / rel).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.root / rel).parent.rmdir()

    def _fresh_folder(self, key: str) -> Path:
        """objects/<kk>/<key>.g<n>/: where a recompute of a committed stage writes (n unused so far)."""
        n = 2
        while (self.objects / key[:2] / f"{key}.g{n}").exists():
            n += 1
        return self.objects / key[:2] / f"{key}.g{n}"

    @staticmethod
    def _delete_key(con, key: str) -> None:
        for table in (t.name for t in result_tables()):
            con.execute(f"DELETE FROM {table} WHERE key = ?", [key])
        con.execute("DELETE FROM artifacts WHERE key = ?", [key])
        con.execute("DELETE FROM stage_registry WHERE key = ?", [key])

    def set_study(self, study: str, stages: dict[str, str | None], info: dict) -> None:
        """Record which stages a study's current spec references (what views show and gc keeps): key -> the name of
        the analysis the stage computes for this study (None for other stages)."""
        fields = ["title", "description", "spec_path", "spec_hash", "spec_yaml", "seed"]
        with self.connect(views=False) as con:
            have = con.execute("SELECT key, analysis FROM study_stages WHERE study = ?", [study]).fetchall()
            row = con.execute(f"SELECT {', '.join(fields)} FROM study_registry WHERE study = ?", [study]).fetchone()
            if dict(have) == stages and row == tuple(info.get(f) for f in fields):
                return  # an unchanged re-run: nothing to write
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM study_stages WHERE study = ?", [study])
            rows = [[study, k, stages[k]] for k in sorted(stages)]
            for i in range(0, len(rows), 500):  # one statement per 500 rows: executemany runs one per row
                chunk = rows[i : i + 500]
                values = ", ".join("(?, ?, ?)" for _ in chunk)
                con.execute(f"INSERT INTO study_stages VALUES {values}", [v for r in chunk for v in r])
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

    def set_sweep(self, sweep: str, rows: list[tuple]) -> None:
        """Record a sweep's current cells: (study, cell, position, axis, path, value, value_num) per cell and field;
        cells no longer in the sweep leave the `sweep` view (their studies and stages stay until `gc`)."""
        with self.connect(views=False) as con:
            have = con.execute("SELECT * EXCLUDE (sweep) FROM sweep_cells WHERE sweep = ?", [sweep]).fetchall()
            if sorted(have, key=str) == sorted(rows, key=str):
                return
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM sweep_cells WHERE sweep = ?", [sweep])
            con.executemany("INSERT INTO sweep_cells VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [[sweep, *r] for r in rows])
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
        """Drop stages no study references (or, with older_than, any stage older than that) and the files in this
        cache's objects folder that its registry does not own (left by interrupted runs or replaced by a
        recompute). In a legacy objects/ folder shared with another cache only the dropped stages' files go."""
        with self.connect(views=False) as con:
            query = "SELECT key FROM stage_registry WHERE key NOT IN (SELECT key FROM study_stages)"
            params: list[Any] = []
            if older_than is not None:
                query += " OR created_at < ?"
                params.append(datetime.now(UTC).replace(tzinfo=None) - older_than)
            doomed = [r[0] for r in con.execute(query, params).fetchall()]
            doomed_files = [
                r[0]
                for r in con.execute("SELECT relpath FROM artifacts WHERE list_contains(?, key)", [doomed]).fetchall()
            ]
            if not dry_run:
                con.execute("BEGIN TRANSACTION")
                for key in doomed:
                    self._delete_key(con, key)
                    con.execute("DELETE FROM study_stages WHERE key = ?", [key])
                con.execute("COMMIT")
            live = {r[0] for r in con.execute("SELECT relpath FROM artifacts").fetchall()}
        shared = self.sharing_objects()  # a legacy objects/ folder another cache writes too: its files are not ours
        if not dry_run and not shared:
            for path in self.objects.glob("*/*/*"):  # objects/<kk>/<key>/<name>; staging is removed below
                if path.parts[-3] != ".staging" and str(path.relative_to(self.root)) not in live:
                    path.unlink(missing_ok=True)
        if not dry_run and shared:
            for rel in doomed_files:  # only the files of the stages this registry dropped
                (self.root / rel).unlink(missing_ok=True)
        if not dry_run:
            for d in list(self.objects.glob("*/*")) + list(self.objects.glob("*")):
                if d.is_dir() and d.name != ".staging" and not any(d.iterdir()):
                    d.rmdir()
            if not shared:  # a shared folder's staging may be another cache's running stage
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

"""The store's contract, independent of any stage kind: hand-made `Stage`s, small artifact files written here,
rows in real result tables, a real DuckDB file in tmp_path; no model, data or sampling.

Covers: commit and read back (rows, registry, checksums, the artifact API); a commit that fails part-way leaves
nothing that looks complete, and the same stage commits afterwards; `gc` keeps what a study references and
removes only what the cache does not reference (nothing outside objects/); `verify` finds corrupt and missing
files; the single-writer lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from sbif_dsl.errors import CacheLockedError, SbifError
from sbif_dsl.stages.base import Stage, StageMeta
from sbif_dsl.store import StageOutput, StageRecord, Store

from .conftest import REPO

# ----------------------------------------------------------------------------------------------- helpers


def make_stage(name: str, kind: str = "llc", inputs: tuple[str, ...] = ()) -> Stage:
    return Stage(kind=kind, version=1, params={"name": name, "seed": 7}, inputs=inputs, meta=StageMeta(label=name))


def refs(*keys: str) -> dict[str, str | None]:
    """A study's references for set_study: key -> the analysis name the study gives the stage (None here). It
    iterates as its keys, so it also serves a set_study that takes a list of keys."""
    return dict.fromkeys(keys)


def record(stage: Stage) -> StageRecord:
    """What the executor records for a stage (executor._record, without a run)."""
    return StageRecord(
        key=stage.key,
        kind=stage.kind,
        version=stage.version,
        fields=dict(stage.params),
        inputs=list(stage.inputs),
        step=stage.step,
        analysis=stage.analysis,
        parent=stage.meta.parent,
        label=stage.label,
        provenance={"host": "test"},
        device="cpu",
        seed=stage.params.get("seed"),
        wall_s=0.01,
    )


def llc_rows(n: int, offset: float = 0.0) -> dict:
    # one column as a numpy array, the others as lists: both ways a runner hands rows over
    return {
        "chain": list(range(n)),
        "llc": np.arange(n, dtype=float) + offset,
        "init_loss": [1.0] * n,
        "mean_loss": [0.5 + offset] * n,
    }


def output(store: Store, stage: Stage, files: dict[str, bytes], tables: dict | None = None) -> StageOutput:
    """Artifacts written to the stage's staging folder, as a run writes them."""
    d = store.staging_dir(stage.key)
    arts = {}
    for name, payload in files.items():
        (d / name).write_bytes(payload)
        arts[name] = d / name
    return StageOutput(tables={"r_llc": llc_rows(3)} if tables is None else tables, artifacts=arts)


def commit(store: Store, stage: Stage, files: dict[str, bytes], tables: dict | None = None) -> None:
    store.commit(record(stage), output(store, stage, files, tables))


def rows_of(store: Store, key: str) -> dict[str, int]:
    """Rows per table (every r_* result table, artifacts, registry) that carry this key; tables without any left
    out."""
    with store.connect(read_only=True, views=False) as con:
        results = con.execute("SELECT table_name FROM duckdb_tables() WHERE starts_with(table_name, 'r_')").fetchall()
        counts = {
            t: con.execute(f"SELECT count(*) FROM {t} WHERE key = ?", [key]).fetchone()[0]
            for t in [*(r[0] for r in results), "artifacts", "stage_registry"]
        }
    return {t: n for t, n in counts.items() if n}


def files_under(folder: Path, but: Store | None = None) -> dict[str, bytes]:
    """relpath -> bytes of every file below folder; `but`: leave out that store's objects and database files."""

    def theirs(p: Path) -> bool:
        return but is not None and (
            but.objects in p.parents or (p.parent == but.root and p.name.startswith(but.db_path.name))
        )

    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not theirs(p)
    }


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(tmp_path / "cache" / "sbif.duckdb")
    s.init()
    return s


# ----------------------------------------------------------------------------------------- commit, read back


def test_commit_then_read_back_rows_registry_and_artifacts(store):
    a, b = make_stage("a"), make_stage("b", kind="dataset", inputs=())
    payload = {"weights.bin": os.urandom(3000), "summary.json": b'{"ok": true}'}
    assert store.complete_keys([a.key]) == set()
    staged = output(store, a, payload)
    staging = next(iter(staged.artifacts.values())).parent
    store.commit(record(a), staged)
    commit(
        store, b, {}, tables={"r_samples": {"data_set": ["train"] * 2, "sample_idx": [0, 1], "sample_name": ["x", "y"]}}
    )

    assert store.complete_keys([a.key, b.key, "0" * 64]) == {a.key, b.key}
    assert store.complete_keys([]) == set()
    assert not staging.exists()  # the staged files were moved into objects/, the run's folder removed

    with store.connect(read_only=True, views=False) as con:
        llc = con.execute("SELECT key, chain, llc, mean_loss FROM r_llc ORDER BY chain").fetchall()
        samples = con.execute("SELECT key, sample_idx, sample_name FROM r_samples ORDER BY sample_idx").fetchall()
        reg = con.execute(
            "SELECT kind, version, label, fields, inputs, provenance, device, seed FROM stage_registry WHERE key = ?",
            [a.key],
        ).fetchone()
        arts = con.execute("SELECT name, relpath, sha256, bytes FROM artifacts WHERE key = ? ORDER BY name", [a.key])
        arts = arts.fetchall()
    assert llc == [(a.key, 0, 0.0, 0.5), (a.key, 1, 1.0, 0.5), (a.key, 2, 2.0, 0.5)]
    assert samples == [(b.key, 0, "x"), (b.key, 1, "y")]
    kind, version, label, fields, inputs, prov, device, seed = reg
    assert (kind, version, label, device, seed) == ("llc", 1, "a", "cpu", 7)
    assert (json.loads(fields), json.loads(inputs), json.loads(prov)) == (dict(a.params), [], {"host": "test"})

    assert [n for n, *_ in arts] == sorted(payload)
    files = store.artifact_files([a.key, b.key])
    assert files[b.key] == {}
    assert set(files[a.key]) == set(payload)
    for name, rel, digest, size in arts:
        path = store.artifact(a.key, name, verify=True)
        assert path == store.root / rel == store.artifact_path(a.key, name) == files[a.key][name]
        assert path.is_relative_to(store.objects)
        assert path.read_bytes() == payload[name]
        assert (digest, size) == (hashlib.sha256(payload[name]).hexdigest(), len(payload[name]))
    listed = {r[0]: r[6] for r in store.list_stages()}
    assert listed == {a.key: sum(len(v) for v in payload.values()), b.key: 0}


def test_unknown_keys_and_names_are_errors_not_empty_results(store):
    a = make_stage("a")
    commit(store, a, {"x.bin": b"x"})
    with pytest.raises(SbifError, match="not in the cache"):
        store.artifact(a.key, "nope.bin")
    with pytest.raises(SbifError, match="not in the cache"):
        store.artifact("f" * 64, "x.bin")
    with pytest.raises(SbifError, match="not in the cache"):
        store.artifact_files([a.key, "f" * 64])
    assert store.artifact_files([]) == {}
    assert Store(store.root / "other" / "none.duckdb").complete_keys([a.key]) == set()  # no file: nothing complete


def test_recompute_replaces_rows_and_artifacts_of_the_key(store):
    a = make_stage("a")
    commit(store, a, {"x.bin": b"old", "gone.bin": b"only in the first run"}, tables={"r_llc": llc_rows(3)})
    commit(store, a, {"x.bin": b"new!"}, tables={"r_llc": llc_rows(2, offset=10.0)})
    assert rows_of(store, a.key) == {"r_llc": 2, "artifacts": 1, "stage_registry": 1}
    assert store.artifact(a.key, "x.bin", verify=True).read_bytes() == b"new!"
    assert set(store.artifact_files([a.key])[a.key]) == {"x.bin"}
    assert store.verify() == []
    # the file the first run had and the second did not is now an orphan: gc removes it
    store.set_study("s", refs(a.key), {})
    assert store.gc() == []
    assert not store.artifact_path(a.key, "gone.bin").exists()
    assert store.artifact(a.key, "x.bin", verify=True).read_bytes() == b"new!"


def test_the_api_works_the_same_inside_one_held_connection(store):
    a, b = make_stage("a"), make_stage("b")
    with store.held():
        commit(store, a, {"x.bin": b"a"})
        assert store.complete_keys([a.key]) == {a.key}
        assert store.complete_keys([a.key, b.key]) == {a.key}  # temp tables of one call do not leak into the next
        store.artifact_files([a.key])
        store.artifact_files([a.key])
        commit(store, b, {"x.bin": b"b"})
        store.add_to_study("s", [a.key])
    assert store.complete_keys([a.key, b.key]) == {a.key, b.key}
    assert store.artifact(b.key, "x.bin").read_bytes() == b"b"


def test_study_references_set_replaces_add_accumulates(store):
    a, b, c = make_stage("a"), make_stage("b"), make_stage("c")
    for s in (a, b, c):
        commit(store, s, {"x.bin": s.label.encode()})
    store.set_study("s", refs(a.key, b.key), {"title": "S"})
    store.set_study("s", refs(b.key), {"title": "S2"})
    store.add_to_study("s", [c.key, b.key])
    with store.connect(read_only=True, views=False) as con:
        keys = {r[0] for r in con.execute("SELECT key FROM study_stages WHERE study = 's'").fetchall()}
        title = con.execute("SELECT title FROM study_registry WHERE study = 's'").fetchall()
    assert keys == {b.key, c.key}
    assert title == [("S2",)]


# ------------------------------------------------------------------------------------ interrupted commits


def _missing_artifact(store, stage):
    out = output(store, stage, {"a.bin": b"first", "b.bin": b"second"})
    out.artifacts["b.bin"].unlink()  # disappears between the run and its commit
    return record(stage), out, FileNotFoundError


def _wrong_column(store, stage):
    # the first table's rows are inserted, then the second table's insert fails inside the transaction
    tables = {"r_samples": {"data_set": ["t"], "sample_idx": [0], "sample_name": ["x"]}, "r_llc": {"bogus": [1.0]}}
    return record(stage), output(store, stage, {"a.bin": b"first", "b.bin": b"second"}, tables), duckdb.Error


def _registry_row_fails(store, stage):
    # the registry row is the transaction's last statement: rows and checksums are in, then its fields fail
    rec = record(stage)
    rec.fields = {"not json": object()}
    return rec, output(store, stage, {"a.bin": b"first", "b.bin": b"second"}), TypeError


@pytest.mark.parametrize("failure", [_missing_artifact, _wrong_column, _registry_row_fails])
def test_interrupted_commit_leaves_nothing_that_looks_complete(store, failure):
    done, stage = make_stage("done"), make_stage("interrupted")
    commit(store, done, {"a.bin": b"committed"})
    store.set_study("s", refs(done.key, stage.key), {})
    rec, out, error = failure(store, stage)

    with pytest.raises(error):
        store.commit_all([(rec, out)])

    assert store.complete_keys([done.key, stage.key]) == {done.key}
    assert rows_of(store, stage.key) == {}
    for name in ("a.bin", "b.bin"):
        with pytest.raises(SbifError, match="not in the cache"):
            store.artifact(stage.key, name)
    with pytest.raises(SbifError, match="not in the cache"):
        store.artifact_files([stage.key])
    with store.connect(read_only=True) as con:  # the views (what queries and reports read) do not show it either
        assert con.execute("SELECT count(*) FROM stages").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM llc").fetchone()[0] == 3
    assert store.verify() == []

    # what it left is an unregistered file at most, and gc removes it; the committed stage is untouched
    assert store.gc() == []
    assert not store.artifact_path(stage.key, "a.bin").exists()
    assert not (store.objects / ".staging").exists()
    assert store.artifact(done.key, "a.bin", verify=True).read_bytes() == b"committed"

    # the same stage commits afterwards, within one held connection like the executor's
    with store.held():
        commit(store, stage, {"a.bin": b"retry", "b.bin": b"retry b"})
    assert store.complete_keys([done.key, stage.key]) == {done.key, stage.key}
    assert rows_of(store, stage.key) == {"r_llc": 3, "artifacts": 2, "stage_registry": 1}
    assert store.artifact(stage.key, "b.bin", verify=True).read_bytes() == b"retry b"
    assert store.verify() == []


def test_commit_all_is_one_transaction_per_stage(store):
    first, second, third = make_stage("first"), make_stage("second"), make_stage("third")
    good = (record(first), output(store, first, {"a.bin": b"1"}))
    rec, bad, _ = _wrong_column(store, second)
    never = (record(third), output(store, third, {"a.bin": b"3"}))
    with pytest.raises(duckdb.Error):
        store.commit_all([good, (rec, bad), never])
    assert store.complete_keys([first.key, second.key, third.key]) == {first.key}
    assert rows_of(store, second.key) == {} and rows_of(store, third.key) == {}


def test_interrupted_recompute_keeps_the_committed_stage_intact(store):
    a = make_stage("a")
    commit(store, a, {"a.bin": b"first run"})
    rec, out, error = _registry_row_fails(store, a)  # `sbif run --recompute` (or a re-run after a lost file)
    with pytest.raises(error):
        store.commit_all([(rec, out)])
    assert rows_of(store, a.key) == {"r_llc": 3, "artifacts": 1, "stage_registry": 1}  # the first run's rows
    assert store.complete_keys([a.key]) == {a.key}
    assert store.verify() == []
    assert store.artifact(a.key, "a.bin", verify=True).read_bytes() == b"first run"


# ------------------------------------------------------------------------------------------------------- gc


def test_gc_removes_only_what_the_cache_does_not_reference(store, tmp_path):
    s1, s2, shared, loose = make_stage("s1"), make_stage("s2"), make_stage("shared"), make_stage("loose")
    for s in (s1, s2, shared, loose):
        commit(store, s, {"a.bin": s.label.encode() * 100, "b.json": b"{}"})
    store.set_study("one", refs(s1.key, shared.key), {})
    store.set_study("two", refs(s2.key, shared.key), {})
    store.set_study("one", refs(s1.key), {})  # "one" no longer needs `shared`, "two" still does
    # leftovers of interrupted runs: an unregistered file of a key, a staging folder of a run
    orphan = store.artifact_path("ab" + "0" * 62, "state.pt")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    stray = store.objects / s1.key[:2] / s1.key / "stray.tmp"  # next to a referenced stage's files
    stray.write_bytes(b"stray")
    staged = store.staging_dir(loose.key) / "traces.parquet"
    staged.write_bytes(b"staged")
    # files that are not the cache's objects: beside the database, in its folder, elsewhere in tmp_path
    (store.root / "notes.txt").write_text("mine")
    (store.root / "reports").mkdir()
    (store.root / "reports" / "r.html").write_text("<html>")
    (store.objects / "README").write_text("not an artifact")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.bin").write_bytes(b"x")
    outside = files_under(tmp_path, but=store)
    assert set(outside) == {"cache/notes.txt", "cache/reports/r.html", "elsewhere/x.bin"}
    kept = {s.key: store.artifact_files([s.key])[s.key] for s in (s1, s2, shared)}
    kept_bytes = {k: {n: p.read_bytes() for n, p in v.items()} for k, v in kept.items()}
    everything = files_under(store.objects)

    assert store.gc(dry_run=True) == [loose.key]
    assert files_under(store.objects) == everything  # a dry run deletes nothing
    assert store.complete_keys([loose.key]) == {loose.key}

    assert store.gc() == [loose.key]

    assert store.complete_keys([s1.key, s2.key, shared.key, loose.key]) == {s1.key, s2.key, shared.key}
    assert rows_of(store, loose.key) == {}
    for key, names in kept.items():
        assert {n: p.read_bytes() for n, p in store.artifact_files([key])[key].items()} == kept_bytes[key]
        assert set(names) == {"a.bin", "b.json"}
    assert store.verify() == []
    assert not orphan.exists() and not orphan.parent.exists()
    assert not stray.exists()
    assert not (store.objects / ".staging").exists()
    assert not (store.objects / loose.key[:2] / loose.key).exists()
    left = files_under(store.objects)
    assert set(left) == {"README"} | {
        str(p.relative_to(store.objects)) for names in kept.values() for p in names.values()
    }
    assert files_under(tmp_path, but=store) == outside
    assert store.gc() == []  # nothing more to drop


def test_gc_older_than_drops_old_stages_even_when_referenced(store):
    old, new, loose = make_stage("old"), make_stage("new"), make_stage("loose")
    for s in (old, new, loose):
        commit(store, s, {"a.bin": s.label.encode()})
    store.set_study("s", refs(old.key, new.key), {})
    with store.connect(views=False) as con:
        con.execute("UPDATE stage_registry SET created_at = ? WHERE key = ?", [datetime(2000, 1, 1), old.key])
    assert sorted(store.gc(older_than=timedelta(days=7))) == sorted([old.key, loose.key])
    assert store.complete_keys([old.key, new.key, loose.key]) == {new.key}
    assert not store.artifact_path(old.key, "a.bin").exists()
    with store.connect(read_only=True, views=False) as con:
        assert con.execute("SELECT key FROM study_stages").fetchall() == [(new.key,)]


def test_gc_cleans_up_after_a_run_killed_while_a_stage_ran(store):
    """A run interrupted while a stage runs leaves objects/.staging/<key>-<pid>/<key>/<files>: gc removes it."""
    kept = make_stage("kept")
    commit(store, kept, {"a.bin": b"kept"})
    store.set_study("s", refs(kept.key), {})
    running = make_stage("running")
    workdir = store.staging_dir(running.key)  # what LocalBackend.wait hands run_unit
    (workdir / running.key).mkdir()  # run_unit's out_dir for the stage
    (workdir / running.key / "traces.parquet").write_bytes(b"half written")

    assert store.gc() == []
    assert not (store.objects / ".staging").exists()
    assert store.artifact(kept.key, "a.bin", verify=True).read_bytes() == b"kept"


def test_gc_of_one_cache_keeps_the_files_of_another_cache_in_the_same_folder(store):
    other = Store(store.root / "other.duckdb")
    other.init()
    theirs = make_stage("theirs")
    commit(other, theirs, {"a.bin": b"theirs"})
    other.set_study("s", refs(theirs.key), {})
    assert store.gc() == []
    assert other.complete_keys([theirs.key]) == {theirs.key}
    assert other.verify() == []


# --------------------------------------------------------------------------------------------------- verify


def test_verify_reports_corrupt_and_missing_files_and_fix_drops_those_stages(store):
    clean, corrupt, missing, no_files = (
        make_stage("clean"),
        make_stage("corrupt"),
        make_stage("missing"),
        make_stage("0"),
    )
    for s in (clean, corrupt, missing):
        commit(store, s, {"a.bin": os.urandom(2048), "b.json": b"{}"})
    commit(store, no_files, {})
    store.set_study("s", refs(clean.key, corrupt.key, missing.key, no_files.key), {})
    assert store.verify() == []

    path = store.artifact(corrupt.key, "a.bin")
    size = path.stat().st_size
    with open(path, "r+b") as f:  # same size, different bytes
        f.seek(100)
        f.write(bytes(b ^ 0xFF for b in path.read_bytes()[100:164]))
    assert path.stat().st_size == size
    store.artifact(missing.key, "b.json").unlink()

    assert store.verify() == sorted([corrupt.key, missing.key])
    with pytest.raises(SbifError, match="fails its checksum"):
        store.artifact(corrupt.key, "a.bin", verify=True)
    with pytest.raises(SbifError, match="missing or fails its checksum"):
        store.artifact_files([corrupt.key])
    with pytest.raises(SbifError, match="is missing"):
        store.artifact(missing.key, "b.json")
    # a rewritten (same size, new bytes) or missing artifact makes its stage missing: a run recomputes it
    assert store.complete_keys([clean.key, corrupt.key, missing.key]) == {clean.key}
    assert set(store.damaged([clean.key, corrupt.key, missing.key])) == {corrupt.key, missing.key}
    assert rows_of(store, corrupt.key)  # verify without fix changes nothing

    assert store.verify(fix=True) == sorted([corrupt.key, missing.key])
    assert store.verify() == []
    assert store.complete_keys([clean.key, corrupt.key, missing.key, no_files.key]) == {clean.key, no_files.key}
    assert rows_of(store, corrupt.key) == {} and rows_of(store, missing.key) == {}
    assert store.artifact(clean.key, "a.bin", verify=True).exists()
    commit(store, corrupt, {"a.bin": b"recomputed", "b.json": b"{}"})  # the next run recomputes it
    assert store.verify() == []


# ------------------------------------------------------------------------------------------- single writer

HOLD = """
import sys
from sbif_dsl.store import Store
with Store(sys.argv[1]).writer():
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_second_writer_in_this_process_is_refused_with_the_holder(store):
    with store.writer():
        with pytest.raises(CacheLockedError, match=rf"being written by another sbif process \(pid {os.getpid()}\)"):
            with Store(store.db_path).writer():
                pass
        t0 = time.monotonic()
        with pytest.raises(CacheLockedError, match="--wait"):
            with Store(store.db_path).writer(wait_s=0.4):
                pass
        assert time.monotonic() - t0 >= 0.4
        # readers are never locked out by the writer
        assert store.complete_keys(["x"]) == set()
    with Store(store.db_path).writer():  # released on exit
        pass


def test_second_writer_process_is_refused_then_waits_for_the_lock(store):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store.db_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheLockedError, match=rf"\(pid {holder.pid}\)") as e:
            with store.writer():
                pass
        assert isinstance(e.value, SbifError) and e.value.exit_code == 1
        holder.stdin.write("\n")  # let it go; a writer that waits gets the lock
        holder.stdin.flush()
        with store.writer(wait_s=30):
            a = make_stage("a")
            commit(store, a, {"a.bin": b"a"})
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert store.complete_keys([a.key]) == {a.key}


def test_a_cache_from_before_its_own_objects_folder_keeps_working_and_gc_spares_a_shared_folder(tmp_path):
    """An old cache (artifacts under cache/objects/, no record of its folder) opens on that folder; while another
    database shares the folder, gc deletes only the files of the stages it drops, never an unregistered one."""
    root = tmp_path / "cache"
    new = Store(root / "sbif.duckdb")
    new.init()
    kept, dropped = make_stage("kept"), make_stage("dropped")
    for s in (kept, dropped):
        commit(new, s, {"a.bin": s.key.encode()})
    new.set_study("s", refs(kept.key), {})
    (root / "sbif.objects").rename(root / "objects")  # the old layout
    with new.connect(views=False) as con:
        con.execute("UPDATE artifacts SET relpath = replace(relpath, 'sbif.objects/', 'objects/')")
        con.execute("DELETE FROM meta WHERE name = 'objects_dir'")
    old = Store(root / "sbif.duckdb")
    assert old.objects == root / "objects"
    assert old.complete_keys([kept.key, dropped.key]) == {kept.key, dropped.key}
    Store(root / "other.duckdb").init()  # another cache beside it: objects/ may hold its files
    theirs = root / "objects" / "ab" / ("ab" + "0" * 62) / "a.bin"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"not ours")
    assert old.sharing_objects() == [root / "other.duckdb"]
    assert old.gc() == [dropped.key]
    assert theirs.read_bytes() == b"not ours"
    assert not (root / "objects" / dropped.key[:2] / dropped.key / "a.bin").exists()
    assert old.artifact(kept.key, "a.bin", verify=True).read_bytes() == kept.key.encode()


def test_an_older_cache_reads_newer_columns_as_null_until_its_next_write(tmp_path):
    """A cache written before a result table gained columns (or before a table existed) answers every view on a
    read-only connection, the missing columns NULL and the missing tables empty; its next write migrates it."""
    store = Store(tmp_path / "c.duckdb")
    store.init()
    with duckdb.connect(str(store.db_path)) as con:  # what an older version left: fewer columns, no r_schedule
        con.execute("ALTER TABLE r_diagnostics DROP COLUMN ess_tail")
        con.execute("DROP TABLE r_schedule")
        con.execute(
            "INSERT INTO r_diagnostics (key, series, chains, draws, rhat) VALUES ('k' || repeat('0', 63), 'minibatch', "
            "4, 100, 1.001)"
        )
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT ess_tail, rhat FROM r_diagnostics").fetchall() == [(None, 1.001)]
        assert con.execute("SELECT count(*) FROM diagnostics").fetchone() == (0,)  # no study references it
        assert con.execute("SELECT count(*) FROM sampler_schedule").fetchone() == (0,)
    store.init()  # a write migrates
    with duckdb.connect(str(store.db_path), read_only=True) as con:
        cols = {r[0] for r in con.execute("DESCRIBE r_diagnostics").fetchall()}
        assert "ess_tail" in cols and con.execute("SELECT count(*) FROM r_schedule").fetchone() == (0,)

"""`sbif`: the command line. Holds no logic: parses options, calls the library, maps errors to exit codes."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
import time
from datetime import timedelta
from pathlib import Path

import click

from .errors import STORAGE_HINT, SbifError, SpecError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _fail(msg: str, code: int) -> None:
    click.echo(msg, err=True)
    sys.exit(code)


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_STORAGE_HINT = STORAGE_HINT


def handle_errors(fn):
    """User-caused errors are one clear message and an exit code, never a traceback (SBIF_DEBUG=1 shows one)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecError as e:
            _fail("\n".join(f"error: {p}" for p in e.problems), EXIT_BAD_INPUT)
        except SbifError as e:
            if os.environ.get("SBIF_DEBUG"):
                raise
            _fail(f"error: {e}", e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted: completed stages are saved; run again to resume", 130)
        except OSError as e:  # disk full, read-only or unwritable cache: the cache itself stays consistent
            if os.environ.get("SBIF_DEBUG") or e.errno not in _STORAGE_ERRNOS:
                raise
            where = f" ({e.filename})" if e.filename else ""
            _fail(f"error: {e.strerror}{where}; {_STORAGE_HINT}", EXIT_FAILED)
        except Exception as e:
            import duckdb

            if os.environ.get("SBIF_DEBUG") or not isinstance(e, duckdb.Error):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            storage = any(w in first.lower() for w in ("no space", "disk", "read-only", "permission", "quota"))
            hint = _STORAGE_HINT if storage else "hint: SBIF_DEBUG=1 shows the traceback"
            _fail(f"error: the cache database failed: {first}; {hint}", EXIT_FAILED)

    return wrapper


cache_option = click.option(
    "--cache",
    "cache_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="SBIF_CACHE",
    help="DuckDB cache file (default cache/sbif.duckdb; env SBIF_CACHE).",
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a spec field, e.g. sampler.eps=1e-5."
)


def _store(cache_path):
    from .store import Store

    return Store(cache_path)


def _runtime(spec_path, overrides):
    from .checks import load_checked

    spec = load_checked(spec_path, list(overrides))  # before torch is imported: a bad spec fails fast
    from .runtime import runtime_for

    return runtime_for(spec)


@click.group()
@click.version_option(package_name="sbif_dsl")
def main() -> None:
    """Declarative, cached studies of stagewise Bayesian influence (BIF) over training checkpoints."""


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@set_option
@handle_errors
def validate(spec: Path, overrides) -> None:
    """Check a spec: fields, types, ranges and references. Exit 2 with one line per problem."""
    from .api import load

    loaded = load(spec, list(overrides))
    _echo_warnings(loaded.spec)
    s = loaded.spec.study
    if s.sweep is not None:
        click.echo(f"ok: {spec} (sweep {s.name!r}: {len(loaded.cells)} cells, each valid; {len(s.analyses)} analyses)")
    else:
        click.echo(f"ok: {spec} (study {s.name!r}, {len(s.analyses)} analyses)")


def _echo_warnings(spec) -> None:
    """A spec's settings that run but bias results (`Sampler.warnings`), one stderr line each."""
    for line in spec.warnings:
        click.echo(f"warning: {line}", err=True)


@main.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file instead of stdout.")
def schema(out: Path | None) -> None:
    """Print the JSON Schema of the spec format (for editors)."""
    from .spec import json_schema

    text = json.dumps(json_schema(), indent=2)
    if out:
        out.write_text(text + "\n")
    else:
        click.echo(text)


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@set_option
@cache_option
@click.option("--stages", "list_stages", is_flag=True, help="Sweeps: also list every distinct stage.")
@handle_errors
def plan(spec: Path, overrides, cache_path, list_stages: bool) -> None:
    """List the stages a spec needs, their content keys, and whether each is cached (a sweep: its cells)."""
    from .api import load

    loaded = load(spec, list(overrides), cache_path)
    frame = loaded.plan()
    if "shared_by" in frame.columns:
        _plan_sweep(frame, len(loaded.cells), list_stages)
        return
    for r in frame.iter_rows(named=True):
        status = "cached" if r["cached"] else "to run"
        click.echo(f"{r['key'][:16]}  {status:7s}  {r['kind']:11s}  {r['label']}")
    n_cached = int(frame["cached"].sum())
    click.echo(f"{frame.height} stages: {n_cached} cached, {frame.height - n_cached} to run")


def _plan_sweep(frame, n_cells: int, list_stages: bool) -> None:
    """Per cell: its stages, how many it shares with other cells, cached or not; then the distinct totals."""
    import polars as pl

    for (cell, study), g in frame.group_by("cell", "study", maintain_order=True):
        shared = int((g["shared_by"] > 1).sum())
        n_cached = int(g["cached"].sum())
        click.echo(
            f"cell {cell}  {study}: {g.height} stages ({shared} shared with other cells), "
            f"{n_cached} cached, {g.height - n_cached} to run"
        )
    distinct = frame.unique("key", keep="first", maintain_order=True)
    if list_stages:
        for r in distinct.iter_rows(named=True):
            status = "cached" if r["cached"] else "to run"
            click.echo(f"{r['key'][:16]}  {status:7s}  {r['kind']:11s}  {r['label']}  (cells: {r['shared_by']})")
    every = distinct.filter(pl.col("shared_by") == n_cells)
    kinds = ", ".join(f"{n} {k}" for k, n in every.group_by("kind").len().sort("kind").iter_rows())
    n_cached = int(distinct["cached"].sum())
    click.echo(
        f"{n_cells} cells: {distinct.height} distinct stages of {frame.height} in the cells; "
        f"{every.height} shared by every cell ({kinds or 'none'}); "
        f"{n_cached} cached, {distinct.height - n_cached} to run"
    )


class _Progress:
    """Per-stage lines (and a live percentage on a terminal); quiet in CI."""

    def __init__(self, quiet: bool):
        self.tty = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.last = 0.0
        self.current = ""

    def stage(self, event, stage, status) -> None:
        """One line per finished stage: [done/total] kind label, its wall time, what runs and waits, an ETA."""
        if self.quiet:
            return
        self.current = f"{stage.kind:11s} {stage.label}"
        if event == "start" and self.tty and status.running == 1:
            click.echo(f"\r{self.current} ...\033[K", err=True, nl=False)
        elif event == "done":
            left = status.queued + status.running
            eta = f", ETA {_duration(status.eta_s)}" if status.eta_s is not None and left else ""
            line = f"[{status.done}/{status.total}] {self.current}  {status.wall_s:.2f}s"
            if left:
                line += f"  ({status.running} running, {status.queued} queued{eta})"
            click.echo(f"\r{line}\033[K" if self.tty else line, err=True)

    def inner(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.tty and now - self.last > 0.2:
            self.last = now
            click.echo(f"\r{self.current} {100 * done // max(total, 1):3d}%", err=True, nl=False)


def _duration(s: float) -> str:
    return f"{s:.0f}s" if s < 90 else f"{s // 60:.0f}m{s % 60:02.0f}s"


executor_options = [
    click.option(
        "--executor",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="Where stages run: this process, or Ray tasks (pip install 'sbif_dsl[ray]').",
    ),
    click.option(
        "--ray-address",
        default=None,
        metavar="auto|HOST:PORT",
        help="Ray cluster to join (default: start a local one on 127.0.0.1 with --workers CPUs).",
    ),
    click.option("--workers", type=click.IntRange(min=1), default=None, help="Ray: stages in flight at once."),
    click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads per stage (local default: torch's; Ray default: 1 per task). Results are bitwise equal "
        "across executors for equal threads.",
    ),
]


def with_executor_options(fn):
    for option in reversed(executor_options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@set_option
@cache_option
@with_executor_options
@click.option("--recompute", is_flag=True, help="Run every stage even if cached.")
@click.option("--wait", "wait_s", default=0.0, show_default=True, help="Seconds to wait for another writer.")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary line.")
@handle_errors
def run(spec: Path, overrides, cache_path, executor, ray_address, workers, threads, recompute, wait_s, quiet) -> None:
    """Run the stages the cache lacks; an unchanged spec computes nothing."""
    from .api import load

    study = load(spec, list(overrides), cache_path)  # a bad spec fails before torch is imported
    _echo_warnings(study.spec)
    progress = _Progress(quiet)
    options = dict(
        recompute=recompute, executor=executor, ray_address=ray_address, workers=workers, threads=threads,
        wait=wait_s, on_stage=progress.stage, progress=progress.inner,
    )  # fmt: skip
    cells = getattr(study, "cells", None)
    if cells is not None:

        def cell_done(i, n, cell, r, error) -> None:
            if error is not None:
                click.echo(f"cell {i + 1}/{n} {cell.name}: failed: {error}", err=True)
            elif not quiet:
                click.echo(f"cell {i + 1}/{n} {cell.name}: ran {len(r.ran)} of {r.total} stages ({r.wall_s:.1f}s)")

        result = study.run(on_cell_done=cell_done, **options)
    else:
        result = study.run(**options)
    for label, what in result.repaired.items():
        click.echo(f"recomputing {label}: {what}", err=True)
    what = f" of {len(cells)} cells" if cells is not None else ""
    if not result.ran and not recompute:
        click.echo(f"nothing to compute: all {result.total} stages{what} cached ({result.wall_s:.2f}s)")
    else:
        devices = ", ".join(sorted(result.devices)) or "none"
        click.echo(
            f"done: ran {len(result.ran)} stages{what}, {result.cached} cached, in {result.wall_s:.1f}s "
            f"(executor {executor}, device {devices}); cache {study.store.db_path}"
        )
    if cells is None:
        for line in _screen_lines(study.spec.study, _screens(study.store, [study.name]), quiet):
            click.echo(line)
        return
    screens = _screens(study.store, [c.name for c in cells])
    for cell in cells:
        lines = _screen_lines(cell.spec.study, screens, quiet=True)
        if lines:
            click.echo(f"{cell.name}: {lines[0]}")
    if result.failed:
        _fail(f"error: {len(result.failed)} of {len(cells)} cells failed (the others ran)", EXIT_FAILED)


SHOWN_SCREENS = 10  # checkpoints listed by `sbif run`; the rest are counted


def _screens(store, studies: list[str]) -> list[dict]:
    """The `diagnostics` rows of these studies, in one query."""
    from .store import fetch_frame

    marks = ", ".join("?" for _ in studies)
    with store.connect(read_only=True) as con:
        sql = (
            "SELECT d.*, s.stop AS sampler_stop FROM diagnostics d LEFT JOIN sampler_schedule s USING (study, step) "
            f"WHERE d.study IN ({marks}) ORDER BY d.study, d.step"
        )
        return fetch_frame(con, sql, studies).to_dicts()


def _screen_lines(study, screens: list[dict], quiet: bool) -> list[str]:
    """The convergence screens of the study's checkpoints (its rows of the `diagnostics` view), judged with the
    spec's `diagnostics:` thresholds: one line per checkpoint that is not ok, with a hint. A failing screen never
    fails the run. Quiet: one line, only when something is flagged."""
    from .sampling.screens import OK, Thresholds, hint, verdict

    rows = [r for r in screens if r["study"] == study.name]
    if not rows:
        return []
    thresholds = Thresholds.of(study.diagnostics)
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    flagged = [_budget((step, *verdict(rs, thresholds), hint(rs, thresholds)), rs) for step, rs in by_step.items()]
    flagged = [f for f in flagged if f[1] != OK]
    if not flagged:
        return [] if quiet else [f"screens: all {len(by_step)} checkpoints ok (view diagnostics)"]
    steps = ", ".join(str(f[0]) for f in flagged[:SHOWN_SCREENS]) + (", ..." if len(flagged) > SHOWN_SCREENS else "")
    head = f"screens: {len(flagged)} of {len(by_step)} checkpoints flagged (steps {steps}); view diagnostics"
    if quiet:
        return [head]
    lines = [head] + [
        f"  {level} at step {step}: {reason}. Hint: {what}" for step, level, reason, what in flagged[:SHOWN_SCREENS]
    ]
    if len(flagged) > SHOWN_SCREENS:
        lines.append(f"  ... and {len(flagged) - SHOWN_SCREENS} more")
    return lines


def _budget(flag: tuple, rows: list[dict]) -> tuple:
    """A checkpoint whose adaptive sampler ran out of budget before the screens passed says so first."""
    stop = next((r.get("sampler_stop") for r in rows if r.get("sampler_stop")), "") or ""
    if not stop.startswith("budget"):
        return flag
    step, level, reason, what = flag
    field = stop.split(": ", 1)[-1]
    head = f"the adaptive sampler's {field} ran out before the screens passed"
    return (step, "fail" if level == "fail" else "warn", f"{head}; {reason}" if reason else head,
            f"a larger sampler.auto.{field}; {what}" if what else f"a larger sampler.auto.{field}")  # fmt: skip


@main.command()
@click.argument("sql")
@cache_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file (needed for parquet).")
@click.option("--max-rows", default=50, show_default=True, help="Rows shown by --format table.")
@handle_errors
def query(sql: str, cache_path, fmt: str, out: Path | None, max_rows: int) -> None:
    """Run SQL over the views (studies, stages, checkpoints, training_curve, loss_traces, bif, llc, ...)."""
    import polars as pl

    from .api import connect

    if fmt == "parquet" and out is None:
        raise UsageError("--format parquet needs --out FILE")
    con = connect(cache_path)
    for key, what in list(con.damaged().items())[:3]:  # cheap (size + modification time); results may read them
        click.echo(f"warning: stage {key[:12]}: {what}; hint: `sbif run SPEC` recomputes it", err=True)
    df = con.sql(sql)
    if fmt == "parquet":
        df.write_parquet(out)
    elif fmt == "csv":
        text = df.write_csv()
    elif fmt == "json":
        text = json.dumps(df.to_dicts(), default=str, indent=1)
    else:
        with pl.Config(
            tbl_rows=max_rows,
            tbl_cols=-1,
            fmt_str_lengths=60,
            tbl_width_chars=200,
            tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True,
        ):
            text = str(df)
    if fmt != "parquet":
        if out:
            out.write_text(text if text.endswith("\n") else text + "\n")
        else:
            click.echo(text.rstrip("\n"))
    if out:
        click.echo(f"wrote {len(df)} rows to {out}", err=True)


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@set_option
@cache_option
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Default reports/STUDY.html.")
@handle_errors
def report(spec: Path, overrides, cache_path, out: Path | None) -> None:
    """Render the study's cached results as one self-contained HTML file (computes nothing)."""
    from .api import load

    t0 = time.perf_counter()
    path = load(spec, list(overrides), cache_path).report(out)  # a bad spec fails before torch is imported
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s)")


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.argument("grid_args", nargs=-1, metavar="[KEY=V1,V2 ...]")
@click.option("--checkpoint", "step", type=int, default=None, help="Checkpoint step (default: the last one).")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2", help="Sampler values to sweep, e.g. eps=1e-5,1e-4.")
@click.option("--method", default=None, help="Sampler methods to sweep, e.g. sgld,rmsprop_sgld.")
@set_option
@cache_option
@with_executor_options
@click.option("--wait", "wait_s", default=0.0, show_default=True, help="Seconds to wait for another writer.")
@click.option("-q", "--quiet", is_flag=True, help="No per-stage progress.")
@handle_errors
def calibrate(
    spec: Path, grid_args, step, grid, method, overrides, cache_path, executor, ray_address, workers, threads,
    wait_s, quiet,
) -> None:  # fmt: skip
    """Sweep sampler settings at a checkpoint: LLC ± std, stationarity, MALA acceptance, divergences; recommend one.

    Grid: `--grid eps=1e-5,1e-4 gamma=1e3,1e5 nbeta=1e3` (any sampler field; values after the first --grid may
    follow without repeating it). Results are cached and in the `calibration` view.
    """
    rt, store = _runtime(spec, overrides), _store(cache_path)  # a bad spec fails before torch is imported
    from .api import make_backend
    from .calibrate import calibrate as run_calibration
    from .calibrate import format_recommendation, format_table, parse_grid

    progress = _Progress(quiet)
    parsed = parse_grid([*grid, *grid_args], method)
    with store.writer(wait_s=wait_s):
        backend = make_backend(store, executor, ray_address, workers, threads, progress.inner)
        cal = run_calibration(rt, store, parsed, step, report=progress.stage, backend=backend)
    if not parsed:
        click.echo(f"no --grid given: sweeping eps around the spec's value ({rt.study.sampler.eps})")
    click.echo(
        f"calibration of study {rt.study.name!r} at checkpoint step {cal.step} ({cal.ran} stages run, the rest cached):"
    )
    for line in format_table(cal) + format_recommendation(cal):
        click.echo(line)


@main.group()
def cache() -> None:
    """Inspect and maintain the cache."""


@cache.command("ls")
@cache_option
@handle_errors
def cache_ls(cache_path) -> None:
    """List cached stages: key, kind, step, size, wall time, studies referencing them."""
    store = _store(cache_path)
    rows = store.list_stages()
    total = 0
    for key, kind, step, _label, wall, created, size, studies in rows:
        total += size
        click.echo(
            f"{key[:16]}  {kind:11s} step={'' if step is None else step!s:>6}  {size / 1024:9.1f} KiB  "
            f"{(wall or 0):7.2f}s  {created:%Y-%m-%d %H:%M}  {studies or '(unreferenced)'}"
        )
    click.echo(f"{len(rows)} stages, {total / 2**20:.1f} MiB of artifacts in {store.db_path}")


def _parse_age(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)\s*([smhdw])", text.strip())
    if not m:
        raise UsageError(f"--older-than {text!r}: expected a number and a unit, e.g. 30m, 12h, 7d, 2w")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: n})


@cache.command("gc")
@cache_option
@click.option("--older-than", help="Also drop stages created longer ago than this (e.g. 7d).")
@click.option("--dry-run", is_flag=True, help="Only list what would be dropped.")
@handle_errors
def cache_gc(cache_path, older_than: str | None, dry_run: bool) -> None:
    """Drop stages that no study's current spec references (and, optionally, old ones) and orphan files."""
    store = _store(cache_path)
    age = _parse_age(older_than) if older_than else None
    with store.writer():
        doomed = store.gc(older_than=age, dry_run=dry_run)
    verb = "would drop" if dry_run else "dropped"
    click.echo(f"{verb} {len(doomed)} stages")


@cache.command("verify")
@cache_option
@click.option("--fix", is_flag=True, help="Drop stages whose artifact files are missing or corrupt.")
@handle_errors
def cache_verify(cache_path, fix: bool) -> None:
    """Check every artifact file against its checksum."""
    store = _store(cache_path)
    if fix:
        with store.writer():
            bad = store.verify(fix=True)
    else:
        bad = store.verify()
    for key in bad:
        click.echo(f"bad: {key}")
    click.echo(f"{len(bad)} bad stages" + (" (dropped; re-run to recompute)" if fix and bad else ""))
    if bad and not fix:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()

"""The Python API (`import sbif_dsl as sb`): every verb of the CLI, for notebooks and scripts.

    study = sb.load("specs/toy_hierarchy.yaml", overrides={"sampler.gamma": 1e4}, cache="cache/sbif.duckdb")
    study.plan()                      # a Polars frame: stage, key, cached or not
    study.run()                       # what `sbif run` does; returns a RunResult
    study.sql("SELECT step, bif_corr FROM bif WHERE source = 'dog' AND target = 'cat'")   # a Polars frame
    study.report("reports/toy.html")
    sb.connect("cache/sbif.duckdb").sql("SELECT * FROM studies")

The CLI is a thin layer over these functions (one implementation of each verb). Errors are the typed exceptions
of `sbif_dsl.errors` (`SpecError` with file, line and field path in each problem; `UsageError`, ...): the CLI turns
them into its one-line messages and exit codes. Heavy modules (torch) are imported only by the verbs that need
them, so loading and validating a spec stays fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SbifError, UsageError


def _override_items(overrides: Mapping[str, Any] | list[str] | None) -> list[str]:
    """{"sampler.gamma": 1e4} -> ["sampler.gamma=10000.0"] (values written as YAML, as `--set` reads them)."""
    if overrides is None:
        return []
    if isinstance(overrides, list | tuple):
        return [str(o) for o in overrides]
    import yaml

    def text(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()

    return [f"{k}={text(v)}" for k, v in overrides.items()]


def load(spec: str | Path, overrides: Mapping[str, Any] | list[str] | None = None, cache: str | Path | None = None):
    """Load and validate a spec (raises `SpecError`); `cache`: the DuckDB file (default cache/sbif.duckdb or
    $SBIF_CACHE). A spec with a `sweep:` block gives a `Sweep` (its cells validated), any other a `Study`."""
    from .checks import load_checked

    loaded = load_checked(spec, _override_items(overrides))
    if loaded.study.sweep is not None:
        from .sweep import Sweep

        return Sweep(loaded, cache)
    return Study(loaded, cache)


def connect(cache: str | Path | None = None) -> Connection:
    """Read-only access to a cache's SQL views, whatever studies it holds."""
    return Connection(cache)


def views() -> dict[str, str]:
    """The documented SQL views: name -> one line."""
    from .store.views import view_docs

    return view_docs()


def _store(cache):
    """A Store for a cache path (or the Store itself: a sweep's cells share one, and its held connection)."""
    if hasattr(cache, "db_path"):
        return cache
    from .store import Store

    return Store(cache)


class Connection:
    """A cache's SQL views; each `sql` call opens a short read-only connection (a running study may write)."""

    def __init__(self, cache: str | Path | None = None):
        self.store = _store(cache)

    def sql(self, query: str, params: list | None = None):
        """Run SQL over the views; returns a `polars.DataFrame`. Raises UsageError naming the views on bad SQL."""
        import duckdb

        from .store import fetch_frame

        with self.store.connect(read_only=True) as con:
            try:
                return fetch_frame(con, query, params)
            except duckdb.Error as e:
                damaged = self.damaged()
                if damaged:  # a damaged artifact, not the SQL: name the stage and the fix
                    key, what = next(iter(damaged.items()))
                    raise SbifError(
                        f"stage {key[:12]} ({len(damaged)} damaged in all): {what}; hint: `sbif run SPEC` "
                        "recomputes it (or `sbif cache verify --fix` drops it)"
                    ) from None
                raise UsageError(
                    f"SQL failed: {str(e).splitlines()[0]}\nhint: views are {', '.join(views())}"
                ) from None

    def damaged(self) -> dict[str, str]:
        """Committed stages whose artifacts are missing or changed (cheap: size and modification time, else the
        checksum): key -> what is wrong."""
        if not self.store.db_path.exists():
            return {}
        return self.store.damaged([row[0] for row in self.store.list_stages()])

    views = staticmethod(views)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td><code>{n}</code></td><td>{d}</td></tr>" for n, d in views().items())
        return f"<p>sbif_dsl cache <code>{self.store.db_path}</code></p><table>{rows}</table>"


@dataclass
class RunResult:
    """What a run did: the stages it ran, how many were cached, wall time, devices, and the committed stages it
    recomputed because their files were missing or damaged (label -> why)."""

    ran: list = field(default_factory=list)
    cached: int = 0
    wall_s: float = 0.0
    devices: set[str] = field(default_factory=set)
    repaired: dict[str, str] = field(default_factory=dict)
    total: int = 0

    def _repr_html_(self) -> str:
        return (
            f"<p>ran {len(self.ran)} of {self.total} stages ({self.cached} cached) in {self.wall_s:.1f}s"
            f" on {', '.join(sorted(self.devices)) or 'no device'}</p>"
        )


def register_study(spec, store, names: dict[str, str | None]) -> None:
    """Record the study's current stages (key -> analysis name) and its spec."""
    study = spec.study
    store.set_study(
        study.name,
        names,
        {
            "title": study.title,
            "description": study.description,
            "spec_path": str(spec.path),
            "spec_hash": _sha256(spec.text),
            "spec_yaml": spec.text,
            "seed": study.seed,
        },
    )


def _sha256(text: str) -> str:
    from .hashing import sha256_hex

    return sha256_hex(text)


def make_backend(store, executor: str = "local", ray_address=None, workers=None, threads=None, progress=None):
    """The executor backend: "local" (this process) or "ray" (a private or running Ray cluster)."""
    from .executor import LocalBackend

    if executor == "local":
        if ray_address or workers:
            raise UsageError("--ray-address and --workers need --executor ray")
        return LocalBackend(store, progress, threads=threads)
    if executor != "ray":
        raise UsageError(f"executor {executor!r}: expected 'local' or 'ray'")
    from .ray_backend import RayBackend

    return RayBackend(store, address=ray_address, workers=workers, cpus_per_task=threads or 1)


class Study:
    """A loaded, validated spec and the cache it runs against."""

    def __init__(self, spec, cache: str | Path | None = None):
        self.spec = spec
        self.store = _store(cache)

    @property
    def name(self) -> str:
        return self.spec.study.name

    def runtime(self):
        from .runtime import runtime_for

        return runtime_for(self.spec)

    def validate(self) -> Study:
        """Everything that can be checked without running: the spec (done at load) and, for user data, its
        references to the data sets the factory returns."""
        from .plan import check_data_references

        check_data_references(self.runtime())
        return self

    def build_plan(self):
        """The plan (builds the data, which the keys hash); recorded in the cache under its fingerprint."""
        from .plan import build_plan, fingerprint

        p = build_plan(self.runtime(), self.store)
        fp = fingerprint(self.spec)
        if fp is not None and self.store.db_path.exists():
            rows = [[s.key, s.kind, s.step, s.analysis, s.label] for s in p.stages]
            try:
                self.store.remember_plan(fp, rows)
            except SbifError:  # a read-only cache or another writer: recording is only an optimization
                pass
        return p

    def plan(self):
        """The stages, their content keys and whether each is cached, as a `polars.DataFrame`."""
        import polars as pl

        rows = self.stages()
        cached = self.store.complete_keys([r[0] for r in rows])
        return pl.DataFrame(
            {
                "kind": [r[1] for r in rows],
                "step": [r[2] for r in rows],
                "analysis": [r[3] for r in rows],
                "label": [r[4] for r in rows],
                "key": [r[0] for r in rows],
                "cached": [r[0] in cached for r in rows],
            },
            schema_overrides={"step": pl.Int64},
        )

    def stages(self) -> list[list]:
        """[key, kind, step, analysis, label] of every stage of the plan, in plan order (the recorded plan when
        the spec is unchanged since it was built: no data or model is built then)."""
        known = self.recorded_plan()
        if known is not None:
            return known
        return [[s.key, s.kind, s.step, s.analysis, s.label] for s in self.build_plan().stages]

    def run(
        self,
        *,
        recompute: bool = False,
        executor: str = "local",
        ray_address: str | None = None,
        workers: int | None = None,
        threads: int | None = None,
        wait: float = 0.0,
        on_stage: Callable | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RunResult:
        """Run the stages the cache lacks (all of them with recompute), under the cache's writer lock (waiting up
        to `wait` seconds for another writer). on_stage(event, stage, status) and progress(done, total) report
        as the CLI's progress lines do."""
        t0 = time.perf_counter()
        result = RunResult()
        with self.store.writer(wait_s=wait):
            known = None if recompute else self.recorded_plan()
            if known is not None and len(self.store.complete_keys([r[0] for r in known])) == len(known):
                # unchanged and all cached: decided from the recorded plan, without building data or models
                register_study(self.spec, self.store, {r[0]: r[3] for r in known})
                result.total = result.cached = len(known)
                result.wall_s = time.perf_counter() - t0
                return result
            from .executor import execute

            rt = self.runtime()
            p = self.build_plan()
            result.total = len(p.stages)
            for key, what in self.store.damaged([s.key for s in p.missing]).items():  # committed, files are not
                result.repaired[next(s.label for s in p.missing if s.key == key)] = what
            if not p.missing and not recompute:
                register_study(self.spec, self.store, p.names())
                result.cached = len(p.stages)
            else:
                backend = make_backend(self.store, executor, ray_address, workers, threads, progress)
                summary = execute(rt, self.store, p, recompute=recompute, report=on_stage, backend=backend)
                result.ran, result.cached, result.devices = summary.ran, summary.hits, summary.devices
        result.wall_s = time.perf_counter() - t0
        return result

    def recorded_plan(self) -> list[list] | None:
        """[key, kind, step, analysis, label] of this spec's plan as recorded by an earlier build (None: the spec,
        its files or this package changed since, or it reads user code)."""
        from .plan import fingerprint

        fp = fingerprint(self.spec)
        return self.store.recall_plan(fp) if fp is not None else None

    def sql(self, query: str, params: list | None = None):
        """SQL over the cache's views (all studies; filter on `study = study.name`); a `polars.DataFrame`."""
        return Connection(self.store.db_path).sql(query, params)

    def report(self, path: str | Path | None = None) -> Path:
        """Write the HTML report (computes nothing; raises MissingResultsError if stages are not cached)."""
        from .reporting import write_report

        return write_report(self.spec, self.store, Path(path) if path is not None else None)

    views = staticmethod(views)

    def _repr_html_(self) -> str:
        s = self.spec.study
        kinds = ", ".join(a.kind for a in s.analyses)
        return (
            f"<p><b>{s.title or s.name}</b> (study <code>{s.name}</code>, spec <code>{self.spec.path}</code>)</p>"
            f"<p>analyses: {kinds}; cache <code>{self.store.db_path}</code></p>"
        )

"""A spec with a `sweep:` block, as the Python API and the CLI see it: its cells as `Study`s over one cache.

Every cell is validated at load and planned before any runs (an invalid or redundant cell stops the sweep before
it computes anything). Cells run one after another through the executor like any study; a stage whose key two
cells share (the trained checkpoints when only the sampler varies) is computed by the first and a cache hit for
the rest, so adding a value to an axis computes only the new cells.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .api import Connection, RunResult, Study, _store, make_backend, register_study, views
from .errors import CacheLockedError, SbifError, UsageError
from .spec.sweep import cells as sweep_cells
from .spec.sweep import short_names, value_text


@dataclass
class SweepResult(RunResult):
    """A sweep's run: the totals over its cells (as a RunResult) and each cell's own, by study name."""

    cells: dict[str, RunResult] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # cell study -> the error that stopped it

    def _repr_html_(self) -> str:
        return f"<p>{len(self.cells)} cells: " + super()._repr_html_().removeprefix("<p>")


class Sweep:
    """The cells of a sweep spec and the verbs over all of them (same semantics as a Study's)."""

    def __init__(self, spec, cache: str | Path | None = None):
        self.spec = spec
        self.store = _store(cache)
        self.cell_specs = sweep_cells(spec)
        self.cells = [Study(c.spec, self.store) for c in self.cell_specs]  # one Store: one held connection

    @property
    def name(self) -> str:
        return self.spec.study.name

    def validate(self) -> Sweep:
        """Every cell's checks (each validated at load already; this adds the user-data references)."""
        for cell in self.cells:
            cell.validate()
        return self

    def plan(self):
        """Every cell's stages as one `polars.DataFrame` (a cell and study column before a Study's plan columns)
        with `shared_by`: how many cells use the stage (a stage computed once for all of them has the count of
        cells)."""
        import polars as pl

        frames = [
            c.plan().with_columns(pl.lit(i).alias("cell"), pl.lit(c.name).alias("study"))
            for i, c in enumerate(self.cells)
        ]
        df = pl.concat(frames)
        shared = df.group_by("key").agg(pl.col("cell").n_unique().alias("shared_by"))
        first = ["cell", "study"]
        return df.join(shared, on="key", how="left", maintain_order="left").select(
            *first, *[c for c in df.columns if c not in first], "shared_by"
        )

    def _check_distinct(self, stages: list[list[list]]) -> None:
        """Two cells with the same stages are one study under two names: the axis changes no result there."""
        seen: dict[tuple, int] = {}
        for i, rows in enumerate(stages):
            keys = tuple(sorted(r[0] for r in rows))
            if keys in seen:
                j = seen[keys]
                a, b = self.cell_specs[j], self.cell_specs[i]
                differ = [p for (p, v), (_, w) in zip(a.values, b.values, strict=True) if v != w]
                raise UsageError(
                    f"sweep {self.name}: cells [{a.label}] and [{b.label}] compute the same stages: "
                    f"{', '.join(differ)} changes no result of this study; drop that axis (or those values)"
                )
            seen[keys] = i

    def record(self) -> None:
        """The cells' rows in the `sweep` view."""
        names = short_names([p for p, _ in self.cell_specs[0].values]) if self.cell_specs else {}
        rows = []
        for c in self.cell_specs:
            for position, (p, v) in enumerate(c.values):
                num = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
                rows.append((c.name, c.index, position, names[p], p, value_text(v), num))
        self.store.set_sweep(self.name, rows)

    def run(
        self,
        *,
        on_cell: Callable[[int, int, Study], None] | None = None,
        on_cell_done: Callable[[int, int, Study, RunResult, str | None], None] | None = None,
        **options,
    ) -> SweepResult:
        """Plan every cell (nothing runs if one fails), then run them in order with `Study.run`'s options.
        A cell whose stage fails (a diverging chain, say) keeps what it committed and is listed in `failed`; the
        other cells still run. on_cell(i, n, cell) before and on_cell_done(i, n, cell, result, error or None) after
        each cell."""
        import time

        t0 = time.perf_counter()
        out = SweepResult()
        if not options.get("recompute") and self._unchanged(out, options.get("wait", 0.0)):
            out.wall_s = time.perf_counter() - t0
            return out
        stages = [c.stages() for c in self.cells]
        self._check_distinct(stages)
        self.store.init()
        self.record()
        held = None  # on Ray, one instance for every cell (a cell's backend joins it and leaves it running)
        if options.get("executor") == "ray":
            opts = {k: options.get(k) for k in ("ray_address", "workers", "threads")}
            held = make_backend(self.store, "ray", **opts)
        try:
            self._run_cells(out, options, on_cell, on_cell_done)
        finally:
            if held is not None:
                held.close()
        out.total = len({row[0] for rows in stages for row in rows})
        out.cached = out.total - len({s.key for s in out.ran})
        out.wall_s = time.perf_counter() - t0
        return out

    def _unchanged(self, out: SweepResult, wait: float) -> bool:
        """Every cell's plan recorded and complete: register the cells (writes only what changed) and fill `out`,
        in one held connection and without building data or models (the sweep's no-op re-run)."""
        if not self.store.db_path.exists():
            return False
        with self.store.writer(wait_s=wait), self.store.held():
            known = [c.recorded_plan() for c in self.cells]
            if any(k is None for k in known):
                return False
            keys = {r[0] for rows in known for r in rows}
            if len(self.store.complete_keys(sorted(keys))) < len(keys):
                return False
            self._check_distinct(known)
            for cell, rows in zip(self.cells, known, strict=True):
                register_study(cell.spec, self.store, {r[0]: r[3] for r in rows})
                out.cells[cell.name] = RunResult(cached=len(rows), total=len(rows))
            self.record()
        out.total = out.cached = len(keys)
        return True

    def _run_cells(self, out: SweepResult, options: dict, on_cell, on_cell_done) -> None:
        for i, cell in enumerate(self.cells):
            if on_cell:
                on_cell(i, len(self.cells), cell)
            try:
                r = cell.run(**options)
            except (CacheLockedError, UsageError):
                raise  # about the whole sweep, not this cell
            except SbifError as e:
                out.failed[cell.name] = str(e)
                r = RunResult()
            out.cells[cell.name] = r
            out.ran += r.ran
            out.devices |= r.devices
            out.repaired.update(r.repaired)
            if on_cell_done:
                on_cell_done(i, len(self.cells), cell, r, out.failed.get(cell.name))

    def sql(self, query: str, params: list | None = None):
        """SQL over the cache's views (cells are studies: join `sweep` on study); a `polars.DataFrame`."""
        return Connection(self.store.db_path).sql(query, params)

    def report(self, path: str | Path | None = None) -> Path:
        """The sweep report: how the chosen BIF pairs, the LLC and BIF–LOO agreement vary across cells."""
        from .reporting import write_sweep_report

        return write_sweep_report(self, Path(path) if path is not None else None)

    views = staticmethod(views)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{c.index}</td><td><code>{c.name}</code></td></tr>" for c in self.cell_specs)
        return (
            f"<p><b>sweep {self.name}</b>: {len(self.cells)} cells, cache <code>{self.store.db_path}</code></p>"
            f"<table>{rows}</table>"
        )

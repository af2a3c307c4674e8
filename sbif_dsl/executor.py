"""Run the missing stages of a plan on a backend, committing each stage atomically as it finishes.

Only this process (the driver) touches the store: it resolves each stage's declared inputs to artifact files,
hands (stage, inputs, WorkerContext) to a backend, and commits what comes back. A backend runs *units*: a stage
together with the cheap analyses that read only its outputs (a checkpoint's sample and its BIF/LLC), so traces
never travel between processes just to be read once. `LocalBackend` runs units here, one at a time, in plan
order; `sbif_dsl.ray_backend.RayBackend` runs them as Ray tasks as soon as their inputs are committed.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import STORAGE_HINT, SbifError
from .plan import Plan
from .runtime import runtime_for
from .stages import Inputs, Stage, StageOutput, WorkerContext, builds_model, runner
from .store import StageRecord


@dataclass
class Status:
    """Where a run stands, for progress lines: stage counts and a rough ETA."""

    done: int
    running: int
    queued: int
    total: int
    eta_s: float | None = None
    wall_s: float = 0.0  # of the stage just finished


Reporter = Callable[[str, Stage, Status], None]
Progress = Callable[[int, int], None]


@dataclass
class RunSummary:
    ran: list[Stage] = field(default_factory=list)
    hits: int = 0
    wall_s: float = 0.0
    devices: set[str] = field(default_factory=set)
    committed: set[str] = field(default_factory=set)


@dataclass
class StageResult:
    """What running one stage returned, and where and how long it ran (measured by the process that ran it)."""

    key: str
    output: StageOutput
    provenance: dict
    device: str
    wall_s: float


@dataclass(frozen=True, eq=False)
class Unit:
    """Stages run together in one process, in order; later ones may read earlier ones' outputs."""

    stages: tuple[Stage, ...]
    needs: frozenset[str]  # keys produced outside the unit whose artifacts some stage of it reads


def make_units(todo: list[Stage]) -> list[Unit]:
    """Group each stage that builds no model with the unit that produces every input it needs from this run."""
    groups: list[list[Stage]] = []
    group_of: dict[str, int] = {}
    for stage in todo:
        producers = {group_of[k] for k in stage.needs() if k in group_of}
        if not builds_model(stage) and len(producers) == 1:
            g = producers.pop()
        else:
            g = len(groups)
            groups.append([])
        groups[g].append(stage)
        group_of[stage.key] = g
    units = []
    for stages in groups:
        own = {s.key for s in stages}
        units.append(Unit(tuple(stages), frozenset(k for s in stages for k in s.needs() if k not in own)))
    return units


# ----------------------------------------------------------------------------- running a unit (in any process)


def run_unit(
    stages: list[Stage],
    ctx: WorkerContext,
    files: dict[str, dict[str, Path]],
    workdir: Path,
    progress: Progress | None = None,
) -> tuple[list[StageResult], Exception | None]:
    """Run the stages of a unit from their declared inputs (files: key -> {artifact: path}); artifacts go to
    workdir/<key>/. Returns the results of the stages that finished and the error that stopped the rest (so a
    failing analysis never discards the sampling before it). The same function runs here, in a fresh process and
    in a Ray task."""
    files = dict(files)
    results: list[StageResult] = []
    out_dir, label = workdir, "set-up"
    try:
        rt = runtime_for(ctx.spec, ctx.dataset_digest)
        rt.check_dataset(ctx.dataset_digest)
        with rt.thread_policy(ctx.threads):
            for stage in stages:
                out_dir, label = workdir / stage.key, stage.label
                out_dir.mkdir(parents=True, exist_ok=True)
                inputs = Inputs({k: files[k] for k in stage.needs()})
                t0 = time.perf_counter()
                out = runner(stage)(stage, inputs, rt, out_dir, progress)
                wall = time.perf_counter() - t0
                files[stage.key] = dict(out.artifacts)
                provenance = {**rt.provenance(), **out.measured, "wall_s": wall}
                results.append(StageResult(stage.key, out, provenance, str(rt.device), wall))
    except OSError as e:  # a full or read-only disk under the stage's files: say which stage and where
        where = e.filename or out_dir
        return results, SbifError(f"{e.strerror} writing {where} (stage {label}); {STORAGE_HINT}")
    except Exception as e:  # noqa: BLE001 - returned, not raised: the driver commits what finished, then raises
        return results, e
    return results, None


# ----------------------------------------------------------------------------- backends


class LocalBackend:
    """Runs units in this process, one at a time (the default; never imports Ray)."""

    concurrency = 1

    def __init__(self, store, progress: Progress | None = None, threads: int | None = None):
        self.store = store
        self.progress = progress
        self.threads = threads
        self.pending: list[tuple[Unit, WorkerContext, dict]] = []

    def plan_units(self, units: list[Unit]) -> None:
        pass

    def submit(self, unit: Unit, ctx: WorkerContext, needs: Iterable[str]) -> Unit:
        files = self.store.artifact_files(sorted(needs))
        self.pending.append((unit, ctx, files))
        return unit

    def wait(self) -> tuple[Unit, list[StageResult], Exception | None, Path]:
        """Run the oldest submitted unit: (unit, results, error, the folder its artifacts are in)."""
        unit, ctx, files = self.pending.pop(0)
        workdir = self.store.staging_dir(unit.stages[0].key)
        return unit, *run_unit(unit.stages, ctx, files, workdir, self.progress), workdir

    def cancel(self) -> None:
        self.pending.clear()

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- the driver


def execute(rt, store, plan: Plan, recompute: bool = False, report: Reporter | None = None, backend=None) -> RunSummary:
    """Run what the cache lacks (or everything, with recompute). Call inside `store.writer()`."""
    t_run = time.perf_counter()
    from .api import register_study

    register_study(rt.spec, store, plan.names())
    todo = plan.stages if recompute else plan.missing
    summary = run_stages(rt, store, todo, report=report, backend=backend)
    summary.hits = len(plan.stages) - len(todo)
    summary.wall_s = time.perf_counter() - t_run
    return summary


def run_stages(rt, store, todo: list[Stage], report: Reporter | None = None, backend=None) -> RunSummary:
    """Run `todo` (whose other inputs are committed) on the backend; commit each stage as its unit returns."""
    backend = backend or LocalBackend(store)
    ctx = WorkerContext(spec=rt.spec, dataset_digest=rt.dataset_digest, threads=backend.threads)
    summary = RunSummary()
    units = make_units(todo)
    backend.plan_units(units)
    produced = {s.key for s in todo}
    waiting = list(units)
    running: dict[int, Unit] = {}
    clock = _Clock(todo, backend.concurrency)
    finished = None
    try:
        while True:
            with store.held():  # one connection for committing what finished and submitting what that unblocked
                if finished is not None:
                    _commit(store, *finished, summary, clock, running, report)
                for unit in [u for u in waiting if not (u.needs & produced) - summary.committed]:
                    if len(running) >= backend.concurrency:
                        break
                    waiting.remove(unit)
                    running[id(backend.submit(unit, ctx, unit.needs))] = unit
                    for stage in unit.stages if report else ():
                        report("start", stage, clock.status(running))
            if not running:
                if waiting:
                    raise SbifError("internal: no stage can run (an input is neither cached nor planned)")
                break
            finished = backend.wait()
            running.pop(id(finished[0]))
    except BaseException:
        backend.cancel()
        raise
    finally:
        backend.close()
    return summary


def _commit(store, unit: Unit, results, error, workdir: Path, summary: RunSummary, clock, running, report) -> None:
    """Commit the stages of a unit that finished (one transaction each), then raise the error that stopped it."""
    try:
        store.commit_all([(_record(s, r), r.output) for s, r in zip(unit.stages, results)])
        for stage, result in zip(unit.stages, results):
            summary.committed.add(stage.key)
            summary.ran.append(stage)
            summary.devices.add(result.device)
            clock.finished(stage, result.wall_s)
            if report:
                report("done", stage, clock.status(running))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if error is not None:
        raise error


def _record(stage: Stage, result: StageResult) -> StageRecord:
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
        provenance=result.provenance,
        device=result.device,
        seed=stage.params.get("seed"),
        wall_s=result.wall_s,
    )


class _Clock:
    """ETA: each remaining stage costs the mean wall time of its kind so far (else of all kinds), spread over the
    backend's concurrency."""

    def __init__(self, todo: list[Stage], concurrency: int):
        self.total, self.concurrency = len(todo), max(1, concurrency)
        self.left = Counter(s.kind for s in todo)
        self.walls: dict[str, list[float]] = {}
        self.last_wall = 0.0

    def finished(self, stage: Stage, wall: float) -> None:
        self.left[stage.kind] -= 1
        self.walls.setdefault(stage.kind, []).append(wall)
        self.last_wall = wall

    def status(self, running: dict[int, Unit]) -> Status:
        done = self.total - sum(self.left.values())
        n_running = sum(len(u.stages) for u in running.values())
        return Status(done, n_running, self.total - done - n_running, self.total, self._eta(), self.last_wall)

    def _eta(self) -> float | None:
        every = [w for ws in self.walls.values() for w in ws]
        if not every:
            return None
        overall = sum(every) / len(every)
        mean = {k: sum(ws) / len(ws) for k, ws in self.walls.items()}
        cost = sum(n * mean.get(k, overall) for k, n in self.left.items())
        return cost / self.concurrency

"""Run the missing stages of a plan, committing each atomically as it finishes.

The executor's interface is narrow on purpose (a plan in, committed stages out): a distributed backend
can run the stages elsewhere while this process alone writes the store.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .hashing import sha256_hex
from .plan import Plan
from .stages.base import Stage
from .store import StageRecord

Reporter = Callable[[str, Stage, int, int, float | None], None]


@dataclass
class RunSummary:
    ran: list[Stage] = field(default_factory=list)
    hits: int = 0
    wall_s: float = 0.0


def register_study(session, plan: Plan) -> None:
    spec = session.spec
    session.store.set_study(
        session.study.name,
        plan.keys(),
        {
            "title": session.study.title,
            "description": session.study.description,
            "spec_path": str(spec.path),
            "spec_hash": sha256_hex(spec.text),
            "spec_yaml": spec.text,
            "seed": session.study.seed,
        },
    )


def execute(session, plan: Plan, recompute: bool = False, report: Reporter | None = None) -> RunSummary:
    """Run what the cache lacks (or everything, with recompute). Call inside `store.writer()`."""
    summary = RunSummary()
    t_run = time.perf_counter()
    register_study(session, plan)
    todo = plan.stages if recompute else plan.missing
    summary.hits = len(plan.stages) - len(todo)
    with session.thread_policy():
        _run_stages(session, todo, summary, report)
    summary.wall_s = time.perf_counter() - t_run
    return summary


def _run_stages(session, todo: list[Stage], summary: RunSummary, report: Reporter | None) -> None:
    store = session.store
    for i, stage in enumerate(todo, 1):
        if report:
            report("start", stage, i, len(todo), None)
        staging = store.staging_dir(stage.key)
        t0 = time.perf_counter()
        try:
            out = stage.run(session, stage, staging)
            wall = time.perf_counter() - t0
            store.commit(
                StageRecord(
                    key=stage.key,
                    kind=stage.kind,
                    version=stage.version,
                    fields=stage.fields,
                    inputs=stage.inputs,
                    step=stage.step,
                    analysis=stage.analysis,
                    parent=stage.parent,
                    label=stage.label,
                    provenance={**session.provenance(), "wall_s": wall, "seed": stage.seed},
                    device=str(session.device),
                    seed=stage.seed,
                    wall_s=wall,
                ),
                out,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        summary.ran.append(stage)
        if report:
            report("done", stage, i, len(todo), wall)

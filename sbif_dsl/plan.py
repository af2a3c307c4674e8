"""Spec -> ordered stages with content keys, and which of them the cache already holds.

The study's own stages (dataset, checkpoints, token classes, one sample per checkpoint) are built here; every
analysis is built from its kind's declaration (stages/kinds.py): one stage per checkpoint reading the checkpoint's
weights or its sample, or, for study-level kinds, whatever the kind's `build` makes of the plan so far.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec.loader import hierarchy_sets, reference_problems, spec_problem
from .spec.models import analysis_name
from .stages import dataset, load, sample, tokens, train
from .stages.base import Stage, StageMeta
from .stages.kinds import ANALYSES, ANALYSIS


@dataclass
class Plan:
    stages: list[Stage]  # topological order: dataset, checkpoints, then per checkpoint sample + analyses
    cached: set[str]

    @property
    def missing(self) -> list[Stage]:
        return [s for s in self.stages if s.key not in self.cached]

    def keys(self) -> list[str]:
        return [s.key for s in self.stages]

    def names(self) -> dict[str, str | None]:
        """key -> the analysis name this study gives the stage (None: not an analysis): how views name results."""
        return {s.key: s.analysis for s in self.stages}


@dataclass(frozen=True)
class PlanSoFar:
    """What a study-level analysis kind builds on."""

    dataset_key: str
    checkpoints: list[Stage]
    stages: list[Stage]


def check_data_references(rt) -> None:
    """Python data reveals its query sets only when built: check observables against them now."""
    if hierarchy_sets(rt.study) is not None:
        return
    problems = reference_problems(rt.study, set(rt.dataset.sets()))
    if problems:
        path, msg = problems[0]
        raise spec_problem(rt.spec, path, msg)


def checkpoint_stages(rt, store, dataset_key: str) -> list[Stage]:
    """The study's checkpoints: trained in-spec (resuming from the cache where it can) or loaded from files."""
    if rt.study.training is None:
        return load.build(rt, dataset_key)
    return train.build(rt, dataset_key, store.lineage_checkpoints)


def analysis_stage(rt, analysis, parent: Stage, tokens_key: str | None) -> Stage:
    """The stage of a checkpoint- or sample-attached analysis: its declared fields, derived params and parent."""
    kind = ANALYSIS[analysis.kind]
    name = analysis_name(analysis)
    params = {**analysis.key_params(), **(kind.params(rt, analysis) if kind.params else {})}
    if kind.model:  # evaluates the model: its precision and device choice shape the numbers
        params.update(dtype=rt.study.dtype, device=rt.study.device)
    return Stage(
        kind=kind.name,
        version=kind.version,
        params=params,
        inputs=(parent.key, *((tokens_key,) if kind.classes else ())),
        meta=StageMeta(step=parent.step, analysis=name, parent=parent.key, label=f"{name} at step {parent.step}"),
    )


def build_plan(rt, store) -> Plan:
    """rt: the driver's Runtime (builds the data to key it; never resolves a device); store: what is cached."""
    check_data_references(rt)
    study = rt.study
    ds = dataset.build(rt)
    checkpoints = checkpoint_stages(rt, store, ds.key)
    stages: list[Stage] = [ds, *checkpoints]
    tokens_key = None
    if study.token_classes is not None or any(ANALYSIS[a.kind].classes for a in study.analyses):
        token_classes = tokens.build(rt, ds.key)
        stages.append(token_classes)
        tokens_key = token_classes.key
    by_attach = {
        attach: [a for a in study.analyses if ANALYSIS[a.kind].attach == attach] for attach in ("checkpoint", "sample")
    }
    for ckpt in checkpoints:
        stages += [analysis_stage(rt, a, ckpt, tokens_key) for a in by_attach["checkpoint"]]
        smp = sample.build(rt, ckpt, ds.key)
        stages.append(smp)
        stages += [analysis_stage(rt, a, smp, tokens_key) for a in by_attach["sample"]]
    for kind in (k for k in ANALYSES if k.attach == "study"):
        for i, a in enumerate(study.analyses):
            if a.kind == kind.name:
                stages += kind.build(rt, a, i, PlanSoFar(ds.key, checkpoints, list(stages)))
    return Plan(stages=stages, cached=store.complete_keys([s.key for s in stages]))


def fingerprint(spec) -> str | None:
    """What a plan depends on, without building data or models: the validated study, this package's code and
    torch's version, and the size and modification time of every file the spec reads (text data, loaded
    checkpoints, a local HF model or tokenizer). None where user code is involved (`kind: python` data, model or
    token rules: their imports may change anything), so the plan is always built there.

    Equal fingerprints mean an equal plan, so an unchanged re-run decides "nothing to compute" from the cache's
    record of the plan (Store.recall_plan) without importing torch."""
    import glob as globlib
    import importlib.metadata
    from pathlib import Path

    from . import __file__ as package_init
    from .hashing import canonical_json, sha256_hex

    study = spec.study
    rules = study.token_classes.rules.values() if study.token_classes else ()
    if "python" in (study.data.kind, study.model.kind) or any(r.kind == "python" for r in rules):
        return None

    def stat(path: Path) -> list:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()]

    def resolve(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else spec.base_dir / p

    read: list = []
    for p in getattr(study.data, "paths", None) or []:
        read += [stat(Path(f)) for f in sorted(globlib.glob(str(resolve(p))))]
    tokenizer = getattr(study.data, "tokenizer", None)
    if tokenizer is not None and tokenizer.path:
        read.append(stat(resolve(tokenizer.path)))
    if getattr(study.model, "path", None):
        read.append(stat(resolve(study.model.path)))
    if study.checkpoints is not None:
        read += [stat(Path(f)) for f in sorted(globlib.glob(str(resolve(study.checkpoints.glob))))]
    package = Path(package_init).parent
    code = [[str(f.relative_to(package)), *stat(f)[0][1:]] for f in sorted(package.rglob("*.py"))]
    versions = [importlib.metadata.version(m) for m in ("torch", "numpy")]
    return sha256_hex(canonical_json([study.model_dump(mode="json"), read, code, versions]))

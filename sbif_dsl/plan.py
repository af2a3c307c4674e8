"""Spec -> ordered stages with content keys, and which of them the cache already holds."""

from __future__ import annotations

from dataclasses import dataclass

from .spec.loader import hierarchy_sets, reference_problems, spec_problem
from .spec.models import SAMPLED_KINDS
from .stages import agreement, analyses, dataset, lm, load, loo, sample, tokens, train
from .stages.base import Stage


@dataclass
class Plan:
    stages: list[Stage]  # topological order: dataset, checkpoints, then per checkpoint sample + analyses
    cached: set[str]

    @property
    def missing(self) -> list[Stage]:
        return [s for s in self.stages if s.key not in self.cached]

    def keys(self) -> list[str]:
        return [s.key for s in self.stages]


def _check_data_references(rt) -> None:
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


def build_plan(rt, store) -> Plan:
    """rt: the driver's Runtime (builds the data to key it; never resolves a device); store: what is cached."""
    _check_data_references(rt)
    study = rt.study
    ds = dataset.build(rt)
    checkpoints = checkpoint_stages(rt, store, ds.key)
    stages: list[Stage] = [ds, *checkpoints]
    token_classes = None
    if study.token_classes is not None or any(a.kind in lm.USES_CLASSES for a in study.analyses):
        token_classes = tokens.build(rt, ds.key)
        stages.append(token_classes)
    tokens_key = token_classes.key if token_classes else None
    lm_kinds = {"class_bif", "token_bif"}
    for ckpt in checkpoints:
        for a in study.analyses:
            if a.kind in lm.ON_CHECKPOINT:
                stages.append(lm.build(rt, a, ckpt, tokens_key))
        smp = sample.build(rt, ckpt, ds.key)
        stages.append(smp)
        for a in study.analyses:
            if a.kind in SAMPLED_KINDS:
                build = lm.build(rt, a, smp, tokens_key) if a.kind in lm_kinds else analyses.build(rt, a, smp)
                stages.append(build)
    stages.extend(_validation_stages(rt, stages, ds.key, checkpoints))
    return Plan(stages=stages, cached=store.complete_keys([s.key for s in stages]))


def _validation_stages(rt, stages: list[Stage], dataset_key: str, checkpoints: list[Stage]) -> list[Stage]:
    """LOO retraining (one stage per left-out sample) and BIF-vs-LOO agreement (after both analyses)."""
    out: list[Stage] = []
    for i, a in enumerate(rt.study.analyses):
        if a.kind == "loo":
            out.extend(loo.build(rt, a, i, dataset_key, checkpoints))
    for a in rt.study.analyses:
        if a.kind == "agreement":
            compared = [s for s in stages + out if s.analysis in (a.bif, a.loo) and s.kind in ("bif", "loo")]
            out.append(agreement.build(rt, a, compared))
    return out

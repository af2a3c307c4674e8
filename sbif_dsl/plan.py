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


def _check_data_references(session) -> None:
    """Python data reveals its query sets only when built: check observables against them now."""
    if hierarchy_sets(session.study) is not None:
        return
    problems = reference_problems(session.study, set(session.dataset.sets()))
    if problems:
        path, msg = problems[0]
        raise spec_problem(session.spec, path, msg)


def build_plan(session) -> Plan:
    _check_data_references(session)
    study = session.study
    ds = dataset.build(session)
    checkpoints = train.build(session, ds.key) if study.training is not None else load.build(session, ds.key)
    stages: list[Stage] = [ds, *checkpoints]
    lm_kinds = {"class_bif", "token_bif", "class_loss", "induction_score"}
    token_classes = None
    if study.token_classes is not None or any(a.kind in ("class_bif", "class_loss") for a in study.analyses):
        token_classes = tokens.build(session, ds.key)
        stages.append(token_classes)
    tokens_key = token_classes.key if token_classes else None
    for ckpt in checkpoints:
        for a in study.analyses:
            if a.kind not in SAMPLED_KINDS and a.kind not in STUDY_KINDS:
                stages.append(lm.build(session, a, ckpt, tokens_key))
        smp = sample.build(session, ckpt, ds.key)
        stages.append(smp)
        for a in study.analyses:
            if a.kind in SAMPLED_KINDS:
                build = lm.build(session, a, smp, tokens_key) if a.kind in lm_kinds else analyses.build(session, a, smp)
                stages.append(build)
    stages.extend(_validation_stages(session, stages, ds.key, checkpoints))
    return Plan(stages=stages, cached=session.store.complete_keys([s.key for s in stages]))


STUDY_KINDS = ("loo", "agreement")  # one set of stages per study, not per checkpoint


def _validation_stages(session, stages: list[Stage], dataset_key: str, checkpoints: list[Stage]) -> list[Stage]:
    """LOO retraining (one stage per left-out sample) and BIF-vs-LOO agreement (after both analyses)."""
    out: list[Stage] = []
    for i, a in enumerate(session.study.analyses):
        if a.kind == "loo":
            out.extend(loo.build(session, a, i, dataset_key, checkpoints))
    for a in session.study.analyses:
        if a.kind == "agreement":
            compared = [s for s in stages + out if s.analysis in (a.bif, a.loo) and s.kind in ("bif", "loo")]
            out.append(agreement.build(session, a, compared))
    return out

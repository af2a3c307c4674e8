"""Token classes stage: which class each tracked token belongs to, for SQL and for class aggregation.

Convention (shared with the per-token loss): loss position s predicts token s+1, and every class rule
decides about that predicted token. Masks are recomputed in memory by analyses (cheap); this stage
stores them as rows so that `tokens` can be queried with their text and classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import factories
from ..spec.models import TokenClasses
from ..store import StageOutput
from .base import Stage

VERSION = 1


def effective_classes(study) -> TokenClasses:
    return study.token_classes or TokenClasses()


def rules(session) -> dict:
    """Class name -> rule object, in a stable order: induction, structural, then the spec's own rules."""
    from ..tokens import classes as tc

    spec = effective_classes(session.study)
    out: dict = {}
    if spec.induction:
        out["induction"] = tc.Induction()
    if spec.structural == "default":
        out.update(tc.STRUCTURAL_DEFAULT)
    for name, r in spec.rules.items():
        if r.kind == "induction":
            out[name] = tc.Induction()
        elif r.kind == "regex":
            out[name] = tc.Regex(r.pattern)
        elif r.kind == "token_ids":
            out[name] = tc.TokenIds(tuple(r.ids))
        elif r.kind == "positions":
            out[name] = tc.Positions(tuple(r.positions))
        else:
            out[name] = tc.Predicate(factories.resolve(r.factory, session.spec.base_dir))
    return out


def masks_for(session, data_set: str) -> tuple[list[str], torch.Tensor]:
    """(class names, masks [classes, n, T-1]) for one data set, memoised per session."""
    from ..tokens.classes import class_masks

    key = ("class_masks", data_set)
    if key not in session.memo:
        tokens = session.dataset.sets()[data_set].inputs
        session.memo[key] = class_masks(
            tokens, rules(session), session.tokenizer, effective_classes(session.study).remainder
        )
    return session.memo[key]


def is_token_set(session, data_set: str) -> bool:
    x = session.dataset.sets()[data_set].inputs
    return x.dim() == 2 and not x.is_floating_point()


def build(session, dataset_key: str) -> Stage:
    spec = effective_classes(session.study)
    code = {
        n: factories.code_fingerprint(factories.resolve(r.factory, session.spec.base_dir))
        for n, r in spec.rules.items()
        if r.kind == "python"
    }
    data_sets = sorted({o.data for o in session.study.observables if is_token_set(session, o.data)})
    return Stage(
        kind="token_classes",
        version=VERSION,
        fields={
            "classes": spec.model_dump(mode="json"),
            "code": code,
            "data_sets": data_sets,
            "tokenizer": getattr(session.tokenizer, "name", "byte"),
        },
        inputs=[dataset_key],
        run=run,
        label="token classes",
        payload={"data_sets": data_sets},
    )


def run(session, stage: Stage, out_dir: Path) -> StageOutput:
    tok_rows: dict[str, list] = {"data_set": [], "sample_idx": [], "pos": [], "token_id": [], "token_text": []}
    cls_rows: dict[str, list] = {"data_set": [], "sample_idx": [], "pos": [], "class": []}
    text_of: dict[int, str] = {}
    for data_set in stage.payload["data_sets"]:
        tokens = session.dataset.sets()[data_set].inputs  # (n, T)
        names, masks = masks_for(session, data_set)  # (classes, n, T-1)
        predicted = tokens[:, 1:].numpy()  # (n, T-1): the token each loss position predicts
        n, t = predicted.shape
        idx, pos = (a.ravel() for a in np.indices((n, t), dtype=np.int32))
        ids = predicted.ravel()
        for i in np.unique(ids):
            if int(i) not in text_of:
                text_of[int(i)] = session.tokenizer.token_text(int(i))
        tok_rows["data_set"] += [data_set] * ids.size
        tok_rows["sample_idx"].append(idx)
        tok_rows["pos"].append(pos)
        tok_rows["token_id"].append(ids.astype(np.int64))
        tok_rows["token_text"] += [text_of[int(i)] for i in ids]
        for c, name in enumerate(names):
            ci, cp = (a.astype(np.int32) for a in np.nonzero(masks[c].numpy()))
            cls_rows["data_set"] += [data_set] * ci.size
            cls_rows["sample_idx"].append(ci)
            cls_rows["pos"].append(cp)
            cls_rows["class"] += [name] * ci.size
    for rows in (tok_rows, cls_rows):
        for col in ("sample_idx", "pos", "token_id"):
            if col in rows:
                rows[col] = np.concatenate(rows[col]) if rows[col] else np.zeros(0, np.int32)
    return StageOutput(tables={"r_tokens": tok_rows, "r_token_classes": cls_rows})

"""Token classes stage: which class each tracked token belongs to, for SQL and for class aggregation.

Convention (shared with the per-token loss): loss position s predicts token s+1, and every class rule
decides about that predicted token. The stage stores the masks as its `masks.pt` artifact (what `class_bif` and
`class_loss` read, as a declared input) and as rows, so that `tokens` can be queried with their text and classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import factories
from ..runtime import save_blob
from ..spec.models import TokenClasses
from .base import Inputs, Stage, StageMeta, StageOutput

VERSION = 2  # 2: masks are an artifact


def effective_classes(study) -> TokenClasses:
    return study.token_classes or TokenClasses()


def rules(spec: TokenClasses, base_dir) -> dict:
    """Class name -> rule object, in a stable order: induction, structural, then the spec's own rules."""
    from ..tokens import classes as tc

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
            out[name] = tc.Predicate(factories.resolve(r.factory, base_dir))
    return out


def is_token_set(rt, data_set: str) -> bool:
    x = rt.dataset.sets()[data_set].inputs
    return x.dim() == 2 and not x.is_floating_point()


def read_masks(inputs: Inputs, tokens_key: str, data_set: str) -> tuple[list[str], torch.Tensor]:
    """(class names, masks [classes, n, T-1]) of one data set, from a token-classes stage input."""
    blob = torch.load(inputs.file(tokens_key, "masks.pt"), map_location="cpu", weights_only=True)
    if data_set not in blob:
        raise KeyError(f"internal: token classes {tokens_key[:12]} hold no masks of data set {data_set!r}")
    return list(blob[data_set]["names"]), blob[data_set]["masks"]


def build(rt, dataset_key: str) -> Stage:
    spec = effective_classes(rt.study)
    code = {
        n: factories.code_fingerprint(factories.resolve(r.factory, rt.spec.base_dir))
        for n, r in spec.rules.items()
        if r.kind == "python"
    }
    data_sets = sorted({o.data for o in rt.study.observables if is_token_set(rt, o.data)})
    return Stage(
        kind="token_classes",
        version=VERSION,
        params={
            "classes": spec.model_dump(mode="json"),
            "code": code,
            "data_sets": data_sets,
            "tokenizer": getattr(rt.tokenizer, "name", "byte"),
        },
        inputs=(dataset_key,),
        meta=StageMeta(label="token classes"),
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    from ..tokens.classes import class_masks

    spec = TokenClasses.model_validate(stage.params["classes"])
    class_rules = rules(spec, rt.spec.base_dir)
    tok_rows: dict[str, list] = {"data_set": [], "sample_idx": [], "pos": [], "token_id": [], "token_text": []}
    cls_rows: dict[str, list] = {"data_set": [], "sample_idx": [], "pos": [], "class": []}
    text_of: dict[int, str] = {}
    blob: dict[str, dict] = {}
    for data_set in stage.params["data_sets"]:
        tokens = rt.dataset.sets()[data_set].inputs  # (n, T)
        names, masks = class_masks(tokens, class_rules, rt.tokenizer, spec.remainder)  # (classes, n, T-1)
        blob[data_set] = {"names": list(names), "masks": masks.contiguous()}
        predicted = tokens[:, 1:].numpy()  # (n, T-1): the token each loss position predicts
        n, t = predicted.shape
        idx, pos = (a.ravel() for a in np.indices((n, t), dtype=np.int32))
        ids = predicted.ravel()
        for i in np.unique(ids):
            if int(i) not in text_of:
                text_of[int(i)] = rt.tokenizer.token_text(int(i))
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
    save_blob(blob, out_dir / "masks.pt")
    return StageOutput(
        tables={"r_tokens": tok_rows, "r_token_classes": cls_rows}, artifacts={"masks.pt": out_dir / "masks.pt"}
    )

"""Token classes stage: which class each tracked token belongs to, for SQL and for class aggregation.

Convention (shared with the per-token loss): loss position s predicts token s+1, and every class rule
decides about that predicted token. The stage stores the masks as its `masks.pt` artifact (what `class_bif` and
`class_loss` read, as a declared input) and as rows, so that `tokens` can be queried with their text and classes.
"""

from __future__ import annotations

from pathlib import Path

from .. import factories
from .base import Inputs, Stage, StageMeta, StageOutput
from .kind import Kind, Table, View


def effective_classes(study):
    from ..spec.models import TokenClasses

    return study.token_classes or TokenClasses()


def rules(spec, base_dir) -> dict:
    """Class name -> rule object, in a stable order: induction, structural, then the spec's own rules."""
    from ..tokens import classes as tc

    out: dict = {}
    if spec.induction:
        out["induction"] = tc.Induction()
    if spec.structural == "default":
        out.update(tc.STRUCTURAL_DEFAULT)
    build = {  # spec rule -> the rule object it names, field for field
        "induction": lambda r: tc.Induction(),
        "regex": lambda r: tc.Regex(r.pattern, r.mode),
        "token_ids": lambda r: tc.TokenIds(tuple(r.ids)),
        "positions": lambda r: tc.Positions(tuple(r.positions)),
        "python": lambda r: tc.Predicate(factories.resolve(r.factory, base_dir)),
    }
    for name, r in spec.rules.items():
        out[name] = build[r.kind](r)
    return out


def is_token_set(rt, data_set: str) -> bool:
    x = rt.dataset.sets()[data_set].inputs
    return x.dim() == 2 and not x.is_floating_point()


def observable_token_set(rt, observable: str) -> str:
    """The data set of an observable that class/token analyses read: it must hold token sequences."""
    from ..errors import UsageError

    data_set = next(o.data for o in rt.study.observables if o.name == observable)
    if not is_token_set(rt, data_set):
        raise UsageError(
            f"observable {observable!r} does not hold token sequences; class/token analyses need a language dataset"
        )
    return data_set


def read_masks(inputs: Inputs, tokens_key: str, data_set: str):
    """(class names, masks [classes, n, T-1]) of one data set, from a token-classes stage input."""
    import torch

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
    data_sets = sorted({o.data for o in rt.study.observables if o.data is not None and is_token_set(rt, o.data)})
    return Stage(
        kind="token_classes",
        version=KIND.version,
        params={
            "classes": spec.key_params(),
            "code": code,
            "data_sets": data_sets,
            "tokenizer": getattr(rt.tokenizer, "name", "byte"),
        },
        inputs=(dataset_key,),
        meta=StageMeta(label="token classes"),
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import numpy as np

    from ..runtime import save_blob
    from ..spec.models import TokenClasses
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


KIND = Kind(
    name="token_classes",
    version=3,  # 3: keyed on the token-classes block's declared fields; 2: masks are an artifact
    run="sbif_dsl.stages.tokens:run",
    tables=(
        Table("r_tokens", "data_set VARCHAR, sample_idx INTEGER, pos INTEGER, token_id BIGINT, token_text VARCHAR"),
        Table("r_token_classes", "data_set VARCHAR, sample_idx INTEGER, pos INTEGER, class VARCHAR"),
    ),
    views=(
        View(
            "tokens",
            """
        SELECT ss.study, t.data_set, t.sample_idx, s.sample_name, t.pos, t.token_id, t.token_text,
               list(c.class ORDER BY c.class) FILTER (c.class IS NOT NULL) AS classes
        FROM {scope} JOIN r_tokens t ON t.key = sr.key
        JOIN r_samples s ON s.key = json_extract_string(sr.inputs, '$[0]')
                        AND s.data_set = t.data_set AND s.sample_idx = t.sample_idx
        LEFT JOIN r_token_classes c ON c.key = t.key AND c.data_set = t.data_set
                                   AND c.sample_idx = t.sample_idx AND c.pos = t.pos
        GROUP BY ALL""",
            "every tracked token (pos s = the token that loss position s predicts) with its text and classes",
        ),
    ),
)

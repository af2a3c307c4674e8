"""`induction_score`: prefix-matching attention on repeated random blocks per checkpoint (SCIENCE.md §6).

Needs no sampling: a function of the checkpoint's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..keyed import NAME_PATTERN, Base
from .base import Inputs, Stage, StageOutput
from .kind import AnalysisKind, Table, View


class InductionScoreAnalysis(Base):
    """Induction score per checkpoint on repeated random token blocks (SCIENCE.md §6); needs no sampling."""

    KEYED = ("seq_len", "n_seqs")

    kind: Literal["induction_score"] = Field(description="Prefix-matching attention score, max over heads.")
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128, description="Name in SQL.")
    seq_len: int | None = Field(
        default=None, ge=4, le=65536, strict=True, description="Two copies of a block (default: the context)."
    )
    n_seqs: int = Field(default=32, ge=1, le=4096, strict=True, description="Random sequences.")


def seed_params(rt, analysis) -> dict:
    return {"seed": rt.study.seed}


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    import torch

    from ..errors import UsageError
    from ..tokens.induction import induction_score

    a = stage.params
    module = rt.module_at(inputs.file(stage.inputs[0], "state.pt")).eval()
    context = rt.dataset.train.inputs.shape[1]
    # The tokens induction can copy: the synthetic language's repeated spans are letters; elsewhere, every
    # token seen in training (untrained embeddings would understate the score).
    pool = rt.dataset.meta.get("induction_token_pool") or torch.unique(rt.dataset.train.inputs).tolist()
    try:
        res = induction_score(
            module, a["seq_len"] or context, a["n_seqs"], rt.tokenizer.vocab_size, seed=a["seed"], token_pool=pool
        )
    except TypeError as e:
        raise UsageError(f"induction_score: {e}") from None
    return StageOutput(
        tables={
            "r_induction": {
                "score": [float(res["score"])],
                "loss_first_copy": [float(res["loss_first_copy"])],
                "loss_second_copy": [float(res["loss_second_copy"])],
            }
        }
    )


KIND = AnalysisKind(
    name="induction_score",
    version=3,  # 3: keyed on its declared fields (no name)
    run="sbif_dsl.stages.induction_score:run",
    spec=InductionScoreAnalysis,
    attach="checkpoint",
    model=True,
    params=seed_params,
    tables=(Table("r_induction", "score DOUBLE, loss_first_copy DOUBLE, loss_second_copy DOUBLE"),),
    views=(
        View(
            "induction_score",
            """
        SELECT ss.study, sr.step, ss.analysis, i.score, i.loss_first_copy, i.loss_second_copy
        FROM {scope} JOIN r_induction i ON i.key = sr.key""",
            "induction score (max over heads) and first/second-copy loss per checkpoint",
        ),
    ),
)

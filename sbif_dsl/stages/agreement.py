"""Agreement between a BIF analysis and a leave-one-out analysis: the stage records which two analyses are
compared and how; the `agreement_pairs` and `agreement` SQL views (store/views.py) do the statistics, so they
always reflect the BIF and LOO rows of the study's current spec.

Compared pairs: off-diagonal (source ≠ target) by default. The self-influence BIF(i, i) = −Var(l_i) is always
negative (−Corr = −1) and Δ_ii is almost always negative and among the largest |Δ| at its checkpoint, so the
diagonal agrees in sign by construction, and its magnitudes follow their own scale (a variance against a
self-effect), a second population mixed into a pooled correlation. Neither says whether the BIF gets the influence
of one sample on *another* right, which is what the stagewise story is about. On the toy demo, adding the diagonal
raises the weighted sign agreement from 0.82 to 0.97 and Spearman from 0.47 to 0.58, and drops Pearson from 0.73
to 0.42. `diagonal: true` adds them for those who want them.

Statistics (per checkpoint, scope 'checkpoint', and pooled over pairs × checkpoints, scope 'overall'):
Pearson r of (BIF value, Δ); Spearman ρ = Pearson of average ranks (ties share their mean rank); sign agreement =
fraction of pairs with sign(BIF) = sign(Δ) among pairs with Δ ≠ 0; and the same weighted by |Δ| (signs of tiny
effects are noise). Both BIF and Δ are negative when helpful, so agreement means positive correlations.
"""

from __future__ import annotations

from pathlib import Path

from ..spec.models import analysis_name
from .base import Inputs, Stage, StageMeta, StageOutput

VERSION = 1


def build(rt, analysis, compared: list[Stage]) -> Stage:
    """compared: every stage of the named bif and loo analyses (the agreement is complete once they are)."""
    name = analysis_name(analysis)
    return Stage(
        kind="agreement",
        version=VERSION,
        params={"analysis": analysis.model_dump(mode="json"), "name": name},
        inputs=tuple(s.key for s in compared),
        meta=StageMeta(analysis=name, label=f"{name}: {analysis.bif} vs {analysis.loo}"),
    )


def run(stage: Stage, inputs: Inputs, rt, out_dir: Path, progress=None) -> StageOutput:
    a = stage.params["analysis"]
    return StageOutput(
        tables={
            "r_agreement": {
                "bif_analysis": [a["bif"]],
                "loo_analysis": [a["loo"]],
                "value": [a["value"]],
                "diagonal": [a["diagonal"]],
            }
        }
    )

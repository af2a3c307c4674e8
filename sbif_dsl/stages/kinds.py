"""Every stage kind, once. The plan, the spec loader (the `analyses:` union and its JSON Schema), the store's DDL
and the SQL views loop over these lists; nothing registers itself on import.

To add an analysis kind: write its module (spec model, `KIND = AnalysisKind(...)`, run) and add one line to
ANALYSES. Order matters only for attach "study" kinds: they are built in this order (agreement reads the stages of
loo and cumulative_bif, so it comes after them). An analysis that makes stages of further kinds declares them as its
`helpers` (lds: its per-subset retrains), so they need no line here.
"""

from __future__ import annotations

from . import (
    agreement,
    bif,
    calibration,
    class_bif,
    class_loss,
    cumulative_bif,
    dataset,
    induction_score,
    lds,
    llc,
    load,
    loo,
    loss_kernel,
    observable_summary,
    sample,
    token_bif,
    tokens,
    train,
)
from .kind import AnalysisKind, Kind

ANALYSES: list[AnalysisKind] = [
    bif.KIND,
    llc.KIND,
    loss_kernel.KIND,
    class_bif.KIND,
    token_bif.KIND,
    induction_score.KIND,
    class_loss.KIND,
    loo.KIND,
    lds.KIND,
    cumulative_bif.KIND,
    agreement.KIND,
    observable_summary.KIND,
]

KINDS: list[Kind] = [
    *(dataset.KIND, train.KIND, load.KIND, tokens.KIND, sample.KIND, calibration.KIND),
    *ANALYSES,
    *(h for a in ANALYSES for h in a.helpers),  # stage kinds an analysis builds besides its own (lds_subset)
]

BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
ANALYSIS: dict[str, AnalysisKind] = {k.name: k for k in ANALYSES}

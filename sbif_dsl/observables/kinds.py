"""Every observable kind, once: the spec's `observables:` union and the sample stage loop over this list.

To add an observable kind: write its module (spec model with `kind: Literal[...]`, `measure`, `KIND`) and add one
line here.
"""

from __future__ import annotations

from . import accuracy, induction_score, logit_diff, loss, python, target_prob
from .kind import ObservableKind

OBSERVABLES: list[ObservableKind] = [
    loss.KIND,
    logit_diff.KIND,
    target_prob.KIND,
    accuracy.KIND,
    induction_score.KIND,
    python.KIND,
]

OBSERVABLE: dict[str, ObservableKind] = {k.name: k for k in OBSERVABLES}


def observable_key(rt, spec) -> dict:
    """What a sample stage's key holds of an observable: its keyed fields and its kind's extras."""
    kind = OBSERVABLE[spec.kind]
    return {**spec.key_params(), **(kind.key(rt, spec) if kind.key else {})}

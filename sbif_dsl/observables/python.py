"""`kind: python`: a user measurement hook, with the contract checks and source hashing of the other factories.

call outputs: `fn(model_outputs, targets, **options)`, computed in the same forward pass as the set's losses;
call params: `fn(forward, inputs, targets, **options)`, where `forward(x, **kw)` runs the model at the draw's
parameters (`forward.params`: the parameters by name). Either returns `[B]` or `[B, T]` floats, finite at w*.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..keyed import FACTORY_PATTERN
from .common import REDUCE_DOC, DataObservable, Reduce, reducer, scalar_names
from .kind import Measure, ObservableKind


class PythonObservable(DataObservable):
    """A user function of the model's outputs (or of the parameters and a batch), recorded at every draw."""

    KEYED = ("kind", "name", "data", "factory", "options", "call", "reduce")
    KEYED_IF_SET = ("first",)
    UNKEYED = ()

    kind: Literal["python"] = Field(description="User measurement hook.")
    factory: str = Field(
        pattern=FACTORY_PATTERN, max_length=256, description="Import path 'package.module:function' of the hook."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the hook.")
    call: Literal["outputs", "params"] = Field(
        default="outputs",
        description="outputs: fn(model_outputs, targets, **options), in the set's loss forward pass; params: "
        "fn(forward, inputs, targets, **options), forward(x, **kw) runs the model at the draw's parameters.",
    )
    reduce: Reduce = Field(default="per_sample", description=REDUCE_DOC)


def code_key(rt, spec: PythonObservable) -> dict:
    """The hook's source hash: editing the hook re-samples (as for python data, models and token rules)."""
    from .. import factories

    return {"code": factories.code_fingerprint(factories.resolve(spec.factory, rt.spec.base_dir))}


def measure(rt, spec: PythonObservable) -> Measure:
    from .. import factories
    from ..errors import ContractError

    fn = factories.resolve(spec.factory, rt.spec.base_dir)
    origin = f"observable {spec.name!r} (hook {spec.factory!r})"

    def call(*args):
        try:
            return fn(*args, **spec.options)
        except TypeError as e:
            raise ContractError(f"{origin} rejected its arguments (options {sorted(spec.options)}): {e}") from None

    reduce, names = reducer(spec.reduce), scalar_names(spec.reduce)
    if spec.call == "outputs":
        return Measure(on_outputs=lambda out, y: call(out, y), reduce=reduce, names=names)
    return Measure(on_params=lambda forward, x, y: call(forward, x, y), reduce=reduce, names=names)


KIND = ObservableKind("python", PythonObservable, "sbif_dsl.observables.python:measure", key=code_key)

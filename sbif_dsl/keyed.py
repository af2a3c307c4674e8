"""The base of every spec model, and which of a model's fields enter stage keys.

Every field of a model that feeds a key is classified by the model itself (a test checks that none is left out):

- `KEYED`: the result depends on it; it is in the key.
- `KEYED_IF_SET`: a result-affecting field added after caches existed: in the key only when it differs from its
  default, so adding it re-keys no existing stage.
- `UNKEYED`: names, labels, logging, and fields that enter a key in another form (resolved, or as the stages they
  select): never in the key as written.

`key_params()` is the conversion: called once, at plan time, its output is a stage's params.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    KEYED: ClassVar[tuple[str, ...] | None] = None  # None: this model is never part of a key
    KEYED_IF_SET: ClassVar[tuple[str, ...]] = ()
    UNKEYED: ClassVar[tuple[str, ...]] = ("name", "kind")  # an analysis kind is its stage kind

    def key_params(self) -> dict[str, Any]:
        """The result-affecting fields as JSON values (nested models by their own KEYED fields)."""
        if self.KEYED is None:
            raise TypeError(f"internal: {type(self).__name__} declares no KEYED fields")
        out = {name: _json(getattr(self, name)) for name in self.KEYED}
        for name in self.KEYED_IF_SET:
            value = getattr(self, name)
            if value != type(self).model_fields[name].get_default(call_default_factory=True):
                out[name] = _json(value)
        return out


def _json(value: Any) -> Any:
    if isinstance(value, Base):
        return value.key_params() if value.KEYED is not None else value.model_dump(mode="json")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value

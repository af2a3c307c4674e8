"""From a sample stage's observables to the batches the sampler evaluates at every draw, and back.

Observables of one data set that are functions of the model's outputs share one forward pass: the set is
evaluated once per draw and each observable's values are concatenated into one (n, K) row per sample
(`fused`); after the run, `split` cuts the trace back into observables and applies each one's reduction. A set
tracked only for losses is evaluated exactly as before observable kinds existed. Observables of the parameters
(an induction score's attention patterns) are their own batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ContractError
from .kind import Measure
from .kinds import OBSERVABLE


@dataclass
class Part:
    """One observable inside a tracked batch: where its values sit in the batch's rows."""

    name: str
    measure: Measure
    tail: tuple[int, ...]  # one sample's value shape, as recorded
    names: list[str]  # r_tracked sample names


@dataclass
class Tracked:
    """One batch evaluated at every draw: a data set's losses, several observables in one pass, or a probe."""

    x: Tensor
    y: Tensor
    measure: object | None  # None: the data's loss (the sampler's default)
    parts: list[Part] = field(default_factory=list)
    fused: bool = False  # values are (n, Σ tails) rows to split


def spec_of(params: dict):
    """An observable's spec model from a sample stage's params (its keyed fields; kind extras dropped)."""
    model = OBSERVABLE[params.get("kind", "loss")].spec
    return model(**{k: v for k, v in params.items() if k in model.model_fields})


def check_values(values: object, batch: int, origin: str) -> Tensor:
    """An observable's values at w*: a float tensor [B] or [B, ...], finite."""
    if not isinstance(values, Tensor):
        raise ContractError(f"{origin} returned {type(values).__name__}, expected a Tensor of per-sample values")
    if values.dim() < 1 or values.shape[0] != batch:
        raise ContractError(
            f"{origin} returned shape {tuple(values.shape)}; expected one value per sample [{batch}] or [{batch}, T]"
        )
    if not values.is_floating_point():
        raise ContractError(f"{origin} returned dtype {values.dtype}; expected a floating dtype")
    if not torch.isfinite(values).all():
        raise ContractError(f"{origin} returned non-finite values at the checkpoint")
    return values


def plan(rt, module, specs: list, sets: dict) -> list[Tracked]:
    """The tracked batches of a sample stage, each observable's measure checked once at w* on two samples."""
    from ..runtime import Forward

    forward = Forward(module, dict(module.named_parameters()), dict(module.named_buffers()))
    groups: dict[tuple, list] = {}  # (data, first) -> [(spec, measure)]: outputs shared in one pass
    batches: list[Tracked] = []
    for spec in specs:
        m = OBSERVABLE[spec.kind].load_measure()(rt, spec)
        if m.on_params is not None:
            x, y = (rt.on_device(t) for t in m.inputs) if m.inputs is not None else _data(rt, spec, sets)
            batches.append(Tracked(x, y, m.on_params, [_part(spec, m, forward, x, y, sets)]))
            continue
        groups.setdefault((spec.data, spec.first), []).append((spec, m))
    for members in groups.values():
        x, y = _data(rt, members[0][0], sets)
        parts = [_part(spec, m, forward, x, y, sets) for spec, m in members]
        if all(m.is_loss for _, m in members):
            batches += [Tracked(x, y, None, [p]) for p in parts]  # exactly the loss path
        else:
            fused = _Fused([m.on_outputs for _, m in members], max(math.prod(p.tail) for p in parts))
            batches.append(Tracked(x, y, fused, parts, fused=True))
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(batches, key=lambda b: order[b.parts[0].name])


def split(batches: list[Tracked], traces: list[Tensor]) -> dict[str, Tensor]:
    """{observable: (chains, draws, n'[, T])} from the sampler's traces, one per batch, in spec order."""
    out = {}
    for b, t in zip(batches, traces, strict=True):
        offset = 0
        for p in b.parts:
            if b.fused:
                width = math.prod(p.tail)
                t_p = t[..., offset : offset + width].reshape(*t.shape[:3], *p.tail)
                offset += width
            else:
                t_p = t
            out[p.name] = p.measure.reduce(t_p) if p.measure.reduce is not None else t_p
    return out


def _data(rt, spec, sets: dict) -> tuple[Tensor, Tensor]:
    s = sets[spec.data]
    n = spec.first or len(s)
    return rt.on_device(s.inputs[:n]), rt.on_device(s.targets[:n])


def _part(spec, m: Measure, forward, x: Tensor, y: Tensor, sets: dict) -> Part:
    """The observable's contract, checked at w* on the first two samples, and its value shape."""
    n = min(2, x.shape[0])
    origin = f"observable {spec.name!r} ({spec.kind})"
    with torch.no_grad():
        if m.on_params is not None:
            values = m.on_params(forward, x[:n], y[:n])
        else:
            values = m.on_outputs(forward(x[:n]), y[:n])
    tail = tuple(check_values(values, n, origin).shape[1:])
    if m.names is not None:
        names = m.names
    else:
        names = list(sets[spec.data].names[: spec.first or len(sets[spec.data])])
    return Part(spec.name, m, tail, names)


class _Fused:
    """One forward pass, every output observable of the set: (B, Σ widths) rows in the declared order. Under
    autocast the outputs are cast to float32 and measured outside it (as the loss is). `chunk_values`: the values
    per sample that scale its activations (the widest observable, not their sum), which sizes evaluation chunks."""

    def __init__(self, fns: list, chunk_values: int):
        self.fns, self.chunk_values = fns, chunk_values

    def __call__(self, forward, x: Tensor, y: Tensor) -> Tensor:
        out = forward(x)
        device_type = out.device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return _rows([f(out.float(), y) for f in self.fns], x.shape[0], torch.float32)
        return _rows([f(out, y) for f in self.fns], x.shape[0], out.dtype)


def _rows(values: list[Tensor], batch: int, dtype) -> Tensor:
    return torch.cat([v.reshape(batch, -1).to(dtype) for v in values], dim=1)

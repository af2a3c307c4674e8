"""Deep linear network: the model whose stagewise learning of a hierarchy is understood exactly."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DeepLinear(nn.Module):
    def __init__(self, widths: list[int], bias: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.no_grad()
    def init_gaussian(self, scale: float, generator: torch.Generator) -> None:
        """Small init N(0, scale²) puts training in the stagewise (rich) regime."""
        for p in self.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)

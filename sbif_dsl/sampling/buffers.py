"""Where the draws are recorded: preallocated buffers, filled in blocks of draws.

The final (chains, draws, ...) buffers live on the host. On a CPU a block is a view of them; on an accelerator the
draws fill a device block that is copied out once full. The finiteness check runs per block too, so the host syncs
once per block of draws, never per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

_BLOCK_BYTES = 256 * 2**20  # device memory for one block of draws before it is copied to the host
_MAX_BLOCK_DRAWS = 64  # also the cadence of the finiteness check: one host sync per block


@dataclass
class Block:
    """Draws start .. start + size − 1 of every buffer, to fill in place."""

    start: int
    batch_losses: Tensor  # (chains, size)
    traces: list[Tensor]  # per tracked set: (chains, size, n_i[, T])

    @property
    def size(self) -> int:
        """Draws in this block (the last one may be short)."""
        return self.batch_losses.shape[1]


class DrawBuffers:
    """The host buffers of one run (batch losses and one trace per tracked set), handed out block by block."""

    def __init__(self, chains: int, draws: int, shapes: list[tuple[int, ...]], dtype: torch.dtype, device, staged=None):
        """staged: fill a device block and copy it out (default: off a CPU; True on a CPU tests that path)."""
        out_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # float32 for bfloat16 runs too
        self.traces = [torch.empty((chains, draws, *s), dtype=out_dtype) for s in shapes]  # (chains, draws, n_i[, T])
        self.batch_losses = torch.empty((chains, draws), dtype=out_dtype)  # (chains, draws)
        per_draw = chains * (1 + sum(math.prod(s) for s in shapes)) * self.batch_losses.element_size()
        self.block = max(1, min(draws, _MAX_BLOCK_DRAWS, _BLOCK_BYTES // per_draw))
        self.on_host = torch.device(device).type == "cpu" if staged is None else not staged
        if not self.on_host:
            self._dev_traces = [torch.empty((chains, self.block, *s), dtype=out_dtype, device=device) for s in shapes]
            self._dev_batch = torch.empty((chains, self.block), dtype=out_dtype, device=device)

    def blocks(self) -> Iterator[Block]:
        """The blocks in draw order: views of the host buffers on a CPU, the reused device block elsewhere."""
        draws = self.batch_losses.shape[1]
        for d0 in range(0, draws, self.block):
            d1 = min(d0 + self.block, draws)
            if self.on_host:
                yield Block(d0, self.batch_losses[:, d0:d1], [h[:, d0:d1] for h in self.traces])
            else:
                yield Block(d0, self._dev_batch[:, : d1 - d0], [t[:, : d1 - d0] for t in self._dev_traces])

    def keep(self, block: Block) -> None:
        """Copies a filled block into the host buffers (on a CPU it already is one)."""
        if self.on_host:
            return
        d0, d1 = block.start, block.start + block.size
        self.batch_losses[:, d0:d1].copy_(block.batch_losses)
        for h, t in zip(self.traces, block.traces, strict=True):
            h[:, d0:d1].copy_(t)


def first_nonfinite(batch_losses: Tensor, traces: list[Tensor]) -> tuple[int, int] | None:
    """(chain, draw) of the earliest draw where any chain's batch or tracked loss is non-finite; one sync."""
    bad = ~torch.isfinite(batch_losses)  # (chains, draws)
    for t in traces:
        bad |= ~torch.isfinite(t).flatten(2).all(dim=2)  # (chains, draws)
    if not bool(bad.any()):
        return None
    draw = int(bad.any(dim=0).nonzero()[0])
    chain = int(bad[:, draw].nonzero()[0])
    return chain, draw

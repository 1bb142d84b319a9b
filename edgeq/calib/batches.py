"""The calibration activations at one block's input, in the form every block-wise step consumes them: the
states, the keyword arguments each batch needs (attention mask, rotary embeddings, as captured), the batch
size and the device the block runs on. One object instead of the same four parameters on every function."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..io.models import SINGLE_KIND
from .capture import block_output, to_device
from .precision import compute_in
from .reconstruct import token_errors


@dataclass
class Batches:
    hidden: torch.Tensor   # [S, L, D] states at the current block's input, overwritten by run() with its outputs
    kwargs: list[dict]     # one per batch: {layer kind: the keyword arguments blocks of that kind take}
    size: int              # windows per batch
    device: str = "cpu"    # where the block runs (the states stay on the CPU)
    kind: str = SINGLE_KIND  # the layer kind of the block these batches feed now (models.layer_kinds)
    dtype: torch.dtype = torch.float32  # the forward's matrix products (precision.py); the states stay as they are

    @property
    def count(self) -> int:
        return -(-self.hidden.shape[0] // self.size)

    def rows(self, b: int) -> slice:
        return slice(b * self.size, (b + 1) * self.size)

    def __iter__(self):
        """(batch index, its rows), in order."""
        return ((b, self.rows(b)) for b in range(self.count))

    def take(self, b: int, states: torch.Tensor) -> torch.Tensor:
        """Batch b's rows of `states` (these states, or others of the same windows such as targets), on the
        block's device."""
        return states[self.rows(b)].to(self.device)

    def inputs(self, b: int) -> tuple[torch.Tensor, dict]:
        """Batch b of these states and its keyword arguments, on the block's device."""
        return self.take(b, self.hidden), to_device(self.kwargs[b][self.kind], self.device)

    def with_states(self, states: torch.Tensor) -> "Batches":
        """The same batches over other states of the same windows (the float model's, for instance)."""
        return replace(self, hidden=states)

    def for_kind(self, kind: str) -> "Batches":
        """The same states (shared, not copied) feeding a block of another layer kind."""
        return replace(self, kind=kind)

    @torch.no_grad()
    def run(self, block, targets: torch.Tensor | None = None, loss: str = "mse") -> float:
        """hidden <- block(hidden), batch by batch, so the next block's inputs need no second buffer.
        With targets, returns the block loss of the outputs against them (solvers.method.BLOCK_LOSSES)."""
        total = 0.0
        with compute_in(self.dtype, self.device):  # once for every batch: autocast casts each weight once
            for b, rows in self:
                out = block_output(block, *self.inputs(b))
                if targets is not None:
                    total += float(token_errors(out, self.take(b, targets), loss).sum())
                self.hidden[rows] = out.to(self.hidden.device)
        return total / self.hidden[..., 0].numel()

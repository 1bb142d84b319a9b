"""SignRound (intel/auto-round): learn an offset V in [-0.5, 0.5] added before rounding, and how far each
group's min and max are clipped, by signed gradient descent on the block output error.

    s, z = range(min * a, max * b)        a, b in [0, 1], start 1 (no clipping)
    W_hat = s * (clamp(round(W / s + V) + z, 0, 2^bits - 1) - z)

The zero point is an integer at every step (rounded from the tuned range), so the result is on
onnxruntime's fast path. Reference defaults: 200 steps, lr = 1 / steps for V and for a, b, decaying
linearly to 0, keeping the step whose loss was lowest.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import grid
from ..quant.qweight import QuantizedWeight
from .method import Method, Training, register

# Learned methods: steps sized so that SmolLM2-135M takes < 20 min on 2 cores. Learning rates from SmolLM2
# block 3, W3 g128, 100 steps (block output MSE; RTN 0.158): flexround 2.5e-3 0.056, 5e-3 0.046, 1e-2 0.039;
# lrq 2e-3 0.063, 1e-2 0.044 (short runs want larger steps than the papers' 5000-step rates); signround at
# its reference 1/steps.


@dataclass(frozen=True)
class SignRoundOptions(Training):
    pass


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


class SignRound:
    def __init__(self, W: torch.Tensor, spec: grid.QuantSpec):
        self.W, self.spec = W.float(), spec
        self.group_size = spec.columns_per_group(W.shape[1])
        self.wmin, self.wmax = grid.group_ranges(self.W, self.group_size)
        self.offset = torch.zeros_like(self.W, requires_grad=True)
        self.min_scale = torch.ones_like(self.wmin, requires_grad=True)
        self.max_scale = torch.ones_like(self.wmax, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.offset, self.min_scale, self.max_scale]

    def project(self) -> None:
        """Back into the feasible set after a step (auto-round clamps the same way)."""
        with torch.no_grad():
            self.offset.clamp_(-0.5, 0.5)
            self.min_scale.clamp_(0.0, 1.0)
            self.max_scale.clamp_(0.0, 1.0)

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale, zero = grid.range_params(self.wmin * self.min_scale, self.wmax * self.max_scale, self.spec.bits,
                                        self.spec.sym)
        scale = scale.clamp(min=1e-10)  # a range clipped to nothing
        k = self.W.shape[1]
        s, z = grid.expand_groups(scale, self.group_size, k), grid.expand_groups(zero, self.group_size, k)
        q = torch.clamp(round_ste(self.W / s + self.offset) + z, 0, self.spec.maxq)
        return q, scale, zero

    def weight(self) -> torch.Tensor:
        q, scale, zero = self._grid()
        k = self.W.shape[1]
        return grid.expand_groups(scale, self.group_size, k) * (q - grid.expand_groups(zero, self.group_size, k))

    @torch.no_grad()
    def result(self) -> QuantizedWeight:
        q, scale, zero = self._grid()
        return QuantizedWeight.from_float_params(q, scale, zero, self.spec.bits, self.group_size)


register(Method("signround", "learned", SignRoundOptions, SignRound, optimizer="sign", order=5,
                summary="rounding offsets and clipping learned by signed descent on each block's output "
                        "(AutoRound)"))

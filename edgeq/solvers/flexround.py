"""FlexRound (Lee et al., arXiv 2306.00317): learn the rounding by element-wise *division*,

    W_hat = s1 * (clamp(round(W / (s1 * S2 * s3)) + z, 0, 2^bits - 1) - z)

s1 the grid size per (row, group), S2 one scale per weight, s3 one per output row, all trained in log
space from 1 (S2, s3) and from the initial grid (s1) with Adam on the block output error. The zero point
stays at its integer initial value. Because W / S2 moves a weight's code by an amount proportional to |W|,
large weights can move further than small ones: the gradient of the code with respect to log S2 is
-W / (s1 S2 s3).

`rule="addition"` is the ablation the issue asks for: the same engine, grid and optimiser with an additive
offset round(W / s1 + V) in place of the division.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import grid
from ..quant.qweight import QuantizedWeight
from .signround import round_ste
from .method import Method, Training, register
from .options import CLIP, CLIPS, LR, Flag, check_choice, option

RULE = Flag("--rounding-rule", "W / scale (the method) or W / s1 + offset (the paper's ablation, same engine)",
            choices=("division", "addition"))


@dataclass(frozen=True)
class FlexRoundOptions(Training):
    lr: float | None = option(1e-2, LR)
    clip: str = option("minmax", CLIP)
    rule: str = option("division", RULE)  # W / scale (the method) or W / s1 + offset (the paper's ablation)

    def __post_init__(self):
        super().__post_init__()
        check_choice("clip", self.clip, CLIPS)
        check_choice("rounding rule", self.rule, ("division", "addition"))


class FlexRound:
    def __init__(self, W: torch.Tensor, spec: grid.QuantSpec, *, clip: str, rule: str):
        self.W, self.spec, self.rule = W.float(), spec, rule
        self.group_size = spec.columns_per_group(W.shape[1])
        scale, self.zero = grid.fit_params(self.W, spec, clip)
        self.log_grid = scale.clamp(min=1e-10).log().requires_grad_()  # s1, [N, G]
        self.log_rows = torch.zeros(W.shape[0], 1, device=W.device, requires_grad=True)  # s3
        self.log_weights = torch.zeros_like(self.W, requires_grad=self.rule == "division")  # S2
        self.offset = torch.zeros_like(self.W, requires_grad=self.rule == "addition")  # V (ablation)

    def parameters(self) -> list[torch.Tensor]:
        if self.rule == "addition":
            return [self.log_grid, self.offset]
        return [self.log_grid, self.log_weights, self.log_rows]

    def project(self) -> None:
        pass

    def log_per_weight(self) -> torch.Tensor:
        """log(S2 * s3) [N, K]: what divides W besides the grid; LRQ replaces S2 by a low-rank form."""
        return self.log_weights + self.log_rows

    def _codes(self) -> torch.Tensor:
        k = self.W.shape[1]
        log_s1 = grid.expand_groups(self.log_grid, self.group_size, k)
        z = grid.expand_groups(self.zero, self.group_size, k)
        if self.rule == "addition":
            x = self.W / log_s1.exp() + self.offset
        else:
            x = self.W / (log_s1 + self.log_per_weight()).exp()
        return torch.clamp(round_ste(x) + z, 0, self.spec.maxq)

    def weight(self) -> torch.Tensor:
        k = self.W.shape[1]
        scale = grid.expand_groups(self.log_grid.exp(), self.group_size, k)
        return scale * (self._codes() - grid.expand_groups(self.zero, self.group_size, k))

    @torch.no_grad()
    def result(self) -> QuantizedWeight:
        return QuantizedWeight.from_float_params(self._codes(), self.log_grid.exp(), self.zero, self.spec.bits,
                                                 self.group_size)


register(Method("flexround", "learned", FlexRoundOptions, FlexRound, order=6,
                summary="rounding by division with learned per-weight scales, on each block's output"))

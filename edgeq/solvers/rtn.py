"""Round to nearest on the grid, with min-max or MSE-searched clipping. The baseline every method must beat."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import grid
from ..quant.qweight import QuantizedWeight
from .method import Method, register
from .options import CLIP, CLIPS, check_choice, option


@dataclass(frozen=True)
class RTNOptions:
    clip: str = option("minmax", CLIP)

    def __post_init__(self):
        check_choice("clip", self.clip, CLIPS)


def solve(W: torch.Tensor, H: torch.Tensor | None, spec: grid.QuantSpec, *, clip: str) -> QuantizedWeight:
    W = W.float()
    k = W.shape[1]
    gs = spec.columns_per_group(k)
    importance = None if H is None else torch.diag(H).to(W.device)
    scale, zero = grid.fit_params(W, spec, clip, importance)
    q = grid.quantize_groups(W, scale, zero, gs, spec.maxq)
    return QuantizedWeight.from_float_params(q, scale, zero, spec.bits, gs)


register(Method("rtn", "layer", RTNOptions, solve, needs_hessian=False, order=0,
                summary="round to nearest, no calibration"))

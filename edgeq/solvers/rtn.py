"""Round to nearest on the grid, with min-max or MSE-searched clipping. The baseline every method must beat."""
from __future__ import annotations

import torch

from .. import grid
from ..qweight import QuantizedWeight


def solve(W: torch.Tensor, H: torch.Tensor | None, spec: grid.QuantSpec, *, clip: str) -> QuantizedWeight:
    W = W.float()
    k = W.shape[1]
    gs = spec.columns_per_group(k)
    importance = None if H is None else torch.diag(H).to(W.device)
    scale, zero = grid.fit_params(W, spec, clip, importance)
    q = grid.quantize_groups(W, scale, zero, gs, spec.maxq)
    return QuantizedWeight.from_float_params(q, scale, zero, spec.bits, gs)

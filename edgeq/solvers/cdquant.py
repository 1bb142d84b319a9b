"""CDQuant (Nair and Suggala, "CDQuant: Greedy Coordinate Descent for Accurate LLM Quantization", arXiv
2406.17542): greedy coordinate descent on GPTQ's layer objective, row by row, started from GPTQ's codes.

Per output row, with g = H (w_hat - w): moving coordinate j by delta (a whole number of grid steps) changes
the objective (w - w_hat)^T H (w - w_hat) by 2 delta g_j + delta^2 H_jj. Along one coordinate that is a
convex parabola, so the best code there is the grid point nearest its minimiser w_hat_j - g_j / H_jj. Each
step takes, over all coordinates, the move that lowers the objective most, and updates g with one column of
H; a row stops after its step budget or when no move lowers it. The scales and integer zero points stay
GPTQ's, so the result is an ordinary QuantizedWeight, and its objective is never above GPTQ's: it starts
there and takes only improving moves.
"""
from __future__ import annotations

import math

import torch

from .. import grid
from ..kernels import cd_rows
from ..qweight import QuantizedWeight
from .gptq import drop_dead_inputs
from .gptq import solve as gptq_solve


def solve(W: torch.Tensor, H: torch.Tensor, spec: grid.QuantSpec, *, passes: float, act_order: bool, damp: float,
          clip: str, block_size: int, backend: str) -> QuantizedWeight:
    """Options and their defaults: CDQuantOptions in solvers/__init__.py."""
    start = gptq_solve(W, H, spec, act_order=act_order, damp=damp, clip=clip, block_size=block_size,
                       backend=backend)
    return descend(W, H, start, passes, backend)[0]


def descend(W: torch.Tensor, H: torch.Tensor, start: QuantizedWeight, passes: float, backend: str = "auto"):
    """(start improved by greedy coordinate descent on its codes, the moves of each row). At most
    ceil(passes * K) moves a row. The objective uses H undamped: the layer's own output error."""
    W, H = drop_dead_inputs(W, H)  # a dead input's H row is 0: a unit diagonal keeps the minimiser finite
    k = W.shape[1]
    scale = grid.expand_groups(start.scale.to(W.device), start.group_size, k).double().contiguous()
    zero = grid.expand_groups(start.zero.to(W.device), start.group_size, k).double()
    q = start.q.to(W.device).double().contiguous()
    G = ((scale * (q - zero) - W.double()) @ H).contiguous()
    moves = cd_rows(G, H, q, scale, 2 ** start.bits - 1, math.ceil(passes * k), backend)
    return QuantizedWeight.from_float_params(q, start.scale, start.zero, start.bits, start.group_size), moves

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

from dataclasses import dataclass

import math

import torch

from ..quant import grid
from ..kernels import cd_rows
from ..quant.qweight import QuantizedWeight
from .gptq import drop_dead_inputs
from .gptq import solve as gptq_solve
from ..util.argtypes import finite_float
from ..errors import EdgeqError
from .gptq import GPTQOptions
from .method import Method, register
from .options import Flag, option

PASSES = Flag("--passes", "greedy coordinate moves per row, in units of the row's length", type=finite_float)
REFITS = Flag("--refits", "rounds of least-squares scales for the codes, each followed by another descent",
              type=int)
DESCENT_DAMP = Flag("--descent-damp", "descend on H + this x mean(diag H) x I (a pull towards the plain weight "
                    "error)", type=finite_float)


@dataclass(frozen=True)
class CDQuantOptions(GPTQOptions):
    passes: float = option(1.0, PASSES)  # greedy moves per row, in units of K (the start is GPTQ's, with GPTQ's options)
    refits: int = option(0, REFITS)      # rounds of exact least-squares scales for the codes, each followed by descent
    descent_damp: float = option(0.0, DESCENT_DAMP)  # descend on H + this x mean(diag H) x I (towards plain weight
    #                                                  error; then the objective kept below GPTQ's is that damped one)

    def __post_init__(self):
        super().__post_init__()
        if not self.passes > 0 or self.refits < 0 or self.descent_damp < 0:
            raise EdgeqError(f"passes must be > 0, refits and descent_damp >= 0, got {self.passes}, {self.refits} "
                             f"and {self.descent_damp}")


def solve(W: torch.Tensor, H: torch.Tensor, spec: grid.QuantSpec, *, passes: float, refits: int,
          descent_damp: float, act_order: bool, damp: float, clip: str, block_size: int,
          backend: str) -> QuantizedWeight:
    """Options and their defaults: CDQuantOptions in solvers/__init__.py."""
    qw = gptq_solve(W, H, spec, act_order=act_order, damp=damp, clip=clip, block_size=block_size, backend=backend)
    if descent_damp:  # the calibration text's H, regularised towards the plain weight error
        H = H + descent_damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    qw = descend(W, H, qw, passes, backend)[0]
    for _ in range(refits):  # new scales for the codes, then the codes for the new scales
        qw = descend(W, H, refit_scales(W, H, qw), passes, backend)[0]
    return qw


def refit_scales(W: torch.Tensor, H: torch.Tensor, qw: QuantizedWeight) -> QuantizedWeight:
    """Every row's scales by exact least squares for its codes and integer zero points (decoupleQ's scale
    step: a G x G system per row), kept in the rows where they are positive and lower the objective."""
    from .decoupleq import row_errors, solve_scales
    W, H = drop_dead_inputs(W, H)
    H = H.float()
    k, gs = W.shape[1], qw.group_size
    q, zero, old = qw.q.to(W.device).float(), qw.zero.to(W.device).float(), qw.scale.to(W.device)
    scale = solve_scales(W, q - grid.expand_groups(zero, gs, k), H, gs)
    keep = (scale > 0).all(dim=1) & (row_errors(W, q, scale, zero, gs, H) < row_errors(W, q, old, zero, gs, H))
    return QuantizedWeight(qw.q, torch.where(keep[:, None], scale, old).cpu().contiguous(), qw.zero, qw.bits, gs)


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


register(Method("cdquant", "layer", CDQuantOptions, solve, order=4,
                summary="CDQuant: GPTQ's codes improved by greedy coordinate descent on the layer objective"))

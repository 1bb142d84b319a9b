"""MatQuant (Nair et al., 2025), post-training as in MatGPTQ: one master-width (int8) weight whose most
significant bits are themselves good r-bit weights (nesting.py slices them).

GPTQ's sweep run for every width at once on shared codes: each width keeps its own compensated weights,
each weight takes the master code minimising the weighted error summed over the widths (an exact argmin,
one candidate per run of constant slices), and each width feeds its own residual forward (see
kernels/nested_numba.py for why not MatGPTQ's one mean residual). The grid is searched for the same
multi-width error. Zero points are multiples of 2^(master - narrowest width), so every slice keeps an
integer zero point (fast path).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import grid, nesting
from ..errors import EdgeqError
from ..kernels import nested_block
from ..quant.qweight import QuantizedWeight
from .gptq import drop_dead_inputs, inverse_hessian_factor, sweep
from .gptq import GPTQOptions
from .method import Method, register
from .options import WEIGHTS, WIDTHS, check_nesting, option


@dataclass(frozen=True)
class MatQuantOptions(GPTQOptions):
    widths: tuple = option(nesting.DEFAULT_WIDTHS, WIDTHS)  # the widths the int8 codes serve, widest stored
    weights: tuple | None = option(None, WEIGHTS)  # each width's error weight (None: nesting.default_weights)

    def __post_init__(self):
        super().__post_init__()
        check_nesting(self.widths, self.weights)


def solve(W: torch.Tensor, H: torch.Tensor, spec: grid.QuantSpec, *, widths, weights, act_order: bool,
          damp: float, block_size: int, clip: str, backend: str) -> QuantizedWeight:
    loss = nesting.MultiWidthLoss.of(widths, weights)
    if spec.bits != loss.master_bits:
        raise EdgeqError(f"matquant stores the widest width: bits must be {loss.master_bits}, got {spec.bits}")
    W, H = drop_dead_inputs(W, H)
    k = W.shape[1]
    gs = spec.columns_per_group(k)
    importance = torch.diag(H).float()
    scale, zero = fit_nested_params(W, spec, loss, min(widths), clip, importance)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k, device=W.device)

    def kernel(W1, Hinv1, s, z):
        return nested_block(W1, Hinv1, s, z, loss, backend)

    widths_stacked = W.repeat(1 + len(loss.low_bits), 1)  # one compensated copy of W per width
    q = sweep(widths_stacked, inverse_hessian_factor(H, damp, perm=perm), scale, zero, gs, spec.maxq, perm,
              block_size=block_size, kernel=kernel)[:W.shape[0]]  # static groups: no g_idx either way
    return QuantizedWeight.from_float_params(q, scale, zero, spec.bits, gs)


def fit_nested_params(W, spec, loss, min_bits, clip="mse", importance=None, norm=2.4):
    """Scale [N, G] and zero [N, G] (multiples of 2^(master - min_bits)) per group, searched jointly.

    Rounding a min-max zero point to a multiple of 64 (8 -> 2 bits) shifts the grid by up to 32 master
    codes, which clips one end of the group's range; and the int2 slice's top level is code 192, so a
    range filling all 256 codes loses its top quarter at 2 bits. So each allowed zero point is a candidate
    of its own, the scale is the least one that holds the group's range at that zero point, times a
    factor p that may shrink (clip) or widen it (p > 1 fits the range to fewer master codes, which the
    narrow slices need); per row, the candidate with the least multi-width error of round-to-nearest
    codes wins, each column weighted by `importance` (diag H). min-max: p = 1 only."""
    if clip not in grid.CLIP_METHODS:
        raise EdgeqError(f"clip must be one of {grid.CLIP_METHODS}, got {clip!r}")
    k = W.shape[1]
    gs = spec.columns_per_group(k)
    candidates = nested_candidates(spec, min_bits, clip)
    scales, zeros = [], []
    for start in range(0, k, gs):
        Wg = W[:, start:start + gs].float()
        imp = None if importance is None else importance[start:start + gs][None, :]
        s, z = grid.best_shrink(candidates, lambda c, Wg=Wg: nested_grid(Wg, spec, *c),
                                lambda s, z, Wg=Wg, imp=imp: multi_width_error(Wg, s[:, None], z[:, None], loss, norm,
                                                                               imp))
        scales.append(s)
        zeros.append(z)
    return torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


# shrink to 0.5 and widen to 1.3 (a range on 256 / 1.3 = 197 codes: the int2 slice's levels 0..192)
NESTED_FACTORS = [round(0.5 + i / 50, 2) for i in range(41)]


def nested_candidates(spec, min_bits, clip):
    """(zero point, p) pairs; zero None: GPTQ's min-max rule, whose symmetric zero point (the middle code)
    every width keeps. Unsliced (one width), GPTQ's candidates exactly, so that it is GPTQ's grid."""
    step = nesting.zero_step(spec.bits, min_bits)
    if step == 1:
        return [(None, 1 - i / 100) for i in range(80 if clip == "mse" else 1)]
    factors = NESTED_FACTORS if clip == "mse" else [1.0]
    return [(z, p) for z in ([None] if spec.sym else range(0, spec.maxq + 1, step)) for p in factors]


def nested_grid(Wg, spec, zero, p):
    """Per row of a group, the scale that maps [min, max] (widened to hold 0) into codes 0..maxq with this
    zero point, times p (zero None: GPTQ's min-max rule shrunk by p). A zero point of 0 holds no negative
    weight: its scale covers min over half a code, so the error search rejects it wherever there is one."""
    if zero is None:
        return grid.minmax_params(Wg, spec.bits, spec.sym, shrink=p)
    xmin = Wg.amin(dim=1).clamp(max=0)
    xmax = Wg.amax(dim=1).clamp(min=0)
    scale = torch.maximum(-xmin / max(zero, 0.5), xmax / (spec.maxq - zero)) * p
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale is exact
    return scale, torch.full_like(scale, float(zero))


def multi_width_error(Wg, s, z, loss, norm=2.0, importance=None):
    """Per row, sum over widths of weight_r * |w - w_hat_r|^norm for round-to-nearest master codes."""
    c = grid.quantize_codes(Wg, s, z, (1 << loss.master_bits) - 1)
    err = loss.master_weight * (Wg - s * (c - z)).abs().pow(norm)
    c16 = c.to(torch.int16)
    for bits, weight in zip(loss.low_bits, loss.low_weights):
        v = (nesting.slice_codes(c16, loss.master_bits, bits) << (loss.master_bits - bits)).float()
        err = err + float(weight) * (Wg - s * (v - z)).abs().pow(norm)
    if importance is not None:
        err = err * importance
    return err.sum(dim=1)


register(Method("matquant", "layer", MatQuantOptions, solve, nested=True, order=3,
                summary="int8 codes whose top bits are good 4- and 2-bit weights (one file, three widths)"))

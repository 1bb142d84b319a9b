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

import torch

from .. import grid, nesting
from ..errors import EdgeqError
from ..kernels import nested_block
from ..qweight import QuantizedWeight
from .gptq import drop_dead_inputs, permuted_factor, sweep


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
    q = sweep(widths_stacked, permuted_factor(H, perm, damp), scale, zero, gs, spec.maxq, perm,
              block_size=block_size, kernel=kernel)[:W.shape[0]]  # static groups: no g_idx either way
    return QuantizedWeight.from_float_params(q, scale, zero, spec.bits, gs)


def fit_nested_params(W, spec, loss, min_bits, clip="mse", importance=None, steps=80, norm=2.4):
    """Scale [N, G] and zero [N, G] (multiples of 2^(master - min_bits)) per group: min-max, or the
    shrink of the range (p = 1 - i/100, i < steps) with the least multi-width error of round-to-nearest
    codes, each column weighted by `importance` (diag H), as grid.mse_params does for one width."""
    if clip not in grid.CLIP_METHODS:
        raise EdgeqError(f"clip must be one of {grid.CLIP_METHODS}, got {clip!r}")
    step = nesting.zero_step(spec.bits, min_bits)
    k = W.shape[1]
    gs = spec.columns_per_group(k)
    scales, zeros = [], []
    for start in range(0, k, gs):
        Wg = W[:, start:start + gs].float()
        imp = None if importance is None else importance[start:start + gs][None, :]

        def nested_grid(p, Wg=Wg):  # zero points on multiples of `step`, so that every slice keeps an integer one
            s, z = grid.minmax_params(Wg, spec.bits, spec.sym, shrink=p)
            return s, torch.clamp(torch.round(z / step) * step, 0, spec.maxq + 1 - step)
        s, z = grid.best_shrink([1 - i / 100 for i in range(1 if clip == "minmax" else steps)], nested_grid,
                                lambda s, z, Wg=Wg, imp=imp: multi_width_error(Wg, s[:, None], z[:, None], loss, norm,
                                                                               imp))
        scales.append(s)
        zeros.append(z)
    return torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


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


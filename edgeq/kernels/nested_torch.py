"""MatQuant's column sweep in torch, vectorised over rows: the CUDA path and the CPU baseline."""
from __future__ import annotations

import torch

from ..quant.nesting import MultiWidthLoss


class LossTensors:
    """The loss's run table on the sweep's device, float64: made once per block, not once per column
    (on CUDA that would be a host-to-device copy per column)."""

    def __init__(self, loss: MultiWidthLoss, device):
        self.master_weight = loss.master_weight
        self.lo, self.hi, self.values = (torch.from_numpy(a).to(device, torch.float64)
                                         for a in (loss.lo, loss.hi, loss.values))  # [S], [S], [S, R]
        self.low_weights = torch.from_numpy(loss.low_weights).to(device)          # [R]


def best_nested_codes(u: torch.Tensor, t: LossTensors):
    """u [1 + R, ...]: each width's weights in code units (float32), the master's first. Returns the master
    codes minimising the multi-width loss [...] and each width's value of them [1 + R, ...] (float64)."""
    u64 = u.double()
    c = torch.minimum(torch.maximum(torch.round(u[0])[..., None].double(), t.lo), t.hi)  # [..., S]
    cost = t.master_weight * (u64[0][..., None] - c) ** 2
    for r in range(t.values.shape[1]):
        cost = cost + t.low_weights[r] * (u64[r + 1][..., None] - t.values[:, r]) ** 2
    j = cost.argmin(dim=-1)
    code = c.gather(-1, j[..., None]).squeeze(-1)
    return code, torch.stack([code, *(t.values[:, r][j] for r in range(t.values.shape[1]))])


def nested_block_torch(W1: torch.Tensor, Hinv1: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                       loss: MultiWidthLoss):
    """Same contract as nested_block_numba, on torch tensors (any device)."""
    n = scale.shape[0]
    widths = W1.shape[0] // n
    table = LossTensors(loss, W1.device)
    Q1 = torch.empty_like(W1)
    Err1 = torch.empty_like(W1)
    for i in range(W1.shape[1]):
        s, z = scale[:, i], zero[:, i]
        u = (W1[:, i].view(widths, n) / s + z)
        code, v = best_nested_codes(u, table)
        err = (s.double() * (u.double() - v) / Hinv1[i, i].double()).float().reshape(-1)
        Q1[:, i] = code.float().repeat(widths)
        Err1[:, i] = err
        W1[:, i + 1:] -= err[:, None] * Hinv1[i, i + 1:][None, :]
    return Q1, Err1

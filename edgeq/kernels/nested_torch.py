"""MatQuant's column sweep in torch, vectorised over rows: the CUDA path and the CPU baseline."""
from __future__ import annotations

import torch

from ..nesting import MultiWidthLoss


def best_nested_codes(u: torch.Tensor, loss: MultiWidthLoss):
    """u [1 + R, ...]: each width's weights in code units (float32), the master's first. Returns the master
    codes minimising the multi-width loss [...] and each width's value of them [1 + R, ...] (float64)."""
    dev = u.device
    lo, hi = (torch.from_numpy(a).to(dev, torch.float64) for a in (loss.lo, loss.hi))
    values = torch.from_numpy(loss.values).to(dev, torch.float64)          # [S, R]
    low_w = torch.from_numpy(loss.low_weights).to(dev)                     # [R]
    u64 = u.double()
    c = torch.minimum(torch.maximum(torch.round(u[0])[..., None].double(), lo), hi)  # [..., S]
    cost = loss.master_weight * (u64[0][..., None] - c) ** 2
    for t in range(values.shape[1]):
        cost = cost + low_w[t] * (u64[t + 1][..., None] - values[:, t]) ** 2
    j = cost.argmin(dim=-1)
    code = c.gather(-1, j[..., None]).squeeze(-1)
    return code, torch.stack([code, *(values[:, t][j] for t in range(values.shape[1]))])


def nested_block_torch(W1: torch.Tensor, Hinv1: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                       loss: MultiWidthLoss):
    """Same contract as nested_block_numba, on torch tensors (any device)."""
    n = scale.shape[0]
    widths = W1.shape[0] // n
    Q1 = torch.empty_like(W1)
    Err1 = torch.empty_like(W1)
    for i in range(W1.shape[1]):
        s, z = scale[:, i], zero[:, i]
        u = (W1[:, i].view(widths, n) / s + z)
        code, v = best_nested_codes(u, loss)
        err = (s.double() * (u.double() - v) / Hinv1[i, i].double()).float().reshape(-1)
        Q1[:, i] = code.float().repeat(widths)
        Err1[:, i] = err
        W1[:, i + 1:] -= err[:, None] * Hinv1[i, i + 1:][None, :]
    return Q1, Err1

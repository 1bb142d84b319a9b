"""GPTQ's intra-block column sweep in torch, vectorised over rows: the CUDA path and the CPU baseline."""
from __future__ import annotations

import torch


def gptq_block_torch(W1: torch.Tensor, Hinv1: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                     maxq: int):
    """Same contract as gptq_block_numba, on torch tensors (any device)."""
    Q1 = torch.empty_like(W1)
    Err1 = torch.empty_like(W1)
    for i in range(W1.shape[1]):
        w, s, z = W1[:, i], scale[:, i], zero[:, i]
        q = torch.clamp(torch.round(w / s) + z, 0, maxq)
        err = (w - s * (q - z)) / Hinv1[i, i]
        Q1[:, i] = q
        Err1[:, i] = err
        W1[:, i + 1:] -= err[:, None] * Hinv1[i, i + 1:][None, :]
    return Q1, Err1

"""Numerical inner loops: Numba on the CPU, torch twins on CUDA (or on the CPU when asked, for comparison)."""
from __future__ import annotations

import torch

BACKENDS = ("auto", "numba", "torch")


def gptq_block(W1: torch.Tensor, Hinv1: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int,
               backend: str = "auto"):
    """GPTQ column sweep of one block; W1 is updated in place. Returns (codes, scaled errors) as tensors."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if W1.is_cuda or backend == "torch":
        from .gptq_torch import gptq_block_torch
        return gptq_block_torch(W1, Hinv1, scale, zero, maxq)
    from .gptq_numba import gptq_block_numba
    W1_np = W1.numpy()  # shares memory, so the in-place update reaches the caller's tensor
    Q1, Err1 = gptq_block_numba(W1_np, Hinv1.contiguous().numpy(), scale.contiguous().numpy(),
                                zero.contiguous().numpy(), maxq)
    return torch.from_numpy(Q1), torch.from_numpy(Err1)

"""Numerical inner loops: Numba on the CPU, torch twins on CUDA (or on the CPU when asked, for comparison).

Every block kernel has one contract: update W1 [N, B] in place while quantizing its columns left to right,
return (codes, scaled errors) [N, B] for the lazy update of the columns after the block."""
from __future__ import annotations

import torch

BACKENDS = ("auto", "numba", "torch")


def gptq_block(W1: torch.Tensor, Hinv1: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int,
               backend: str = "auto"):
    """GPTQ column sweep of one block: each weight rounded to its nearest code."""
    from .gptq_numba import gptq_block_numba
    from .gptq_torch import gptq_block_torch
    return _run(gptq_block_numba, gptq_block_torch, backend, W1, Hinv1, scale, zero, maxq)


def nested_block(W1: torch.Tensor, Hinv1: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, loss,
                 backend: str = "auto"):
    """MatQuant's column sweep of one block: each weight takes the code best for all sliced widths
    (`loss`, a nesting.MultiWidthLoss)."""
    from .nested_numba import nested_block_numba
    from .nested_torch import nested_block_torch
    return _run(nested_block_numba, nested_block_torch, backend, W1, Hinv1, scale, zero, loss)


def cd_rows(G: torch.Tensor, H: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, maxq: int, steps: int,
            backend: str = "auto") -> torch.Tensor:
    """CDQuant's greedy coordinate descent on the codes q [N, K] (float64, in place) with the per-column
    scales [N, K] and G = (W_hat - W) H (in place); returns each row's number of moves."""
    if _on_torch(backend, q):
        from .cd_torch import cd_rows_torch
        return cd_rows_torch(G, H, q, scale, maxq, steps)
    from .cd_numba import cd_rows_numba
    return torch.from_numpy(cd_rows_numba(G.numpy(), H.numpy(), q.numpy(), scale.numpy(), maxq, steps))


def _on_torch(backend: str, tensor: torch.Tensor) -> bool:
    """The torch twin runs on CUDA tensors or when asked; the Numba kernel everywhere else."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return tensor.is_cuda or backend == "torch"


def _run(numba_fn, torch_fn, backend, W1, Hinv1, scale, zero, extra):
    if _on_torch(backend, W1):
        return torch_fn(W1, Hinv1, scale, zero, extra)
    W1_np = W1.numpy()  # shares memory, so the in-place update reaches the caller's tensor
    Q1, Err1 = numba_fn(W1_np, Hinv1.contiguous().numpy(), scale.contiguous().numpy(),
                        zero.contiguous().numpy(), extra)
    return torch.from_numpy(Q1), torch.from_numpy(Err1)

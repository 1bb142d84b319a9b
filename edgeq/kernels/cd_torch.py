"""CDQuant's greedy coordinate descent in torch: the twin of cd_numba.py for CUDA (and for comparison on the
CPU). All rows step together; a row with no improving move stands still."""
from __future__ import annotations

import torch


def cd_rows_torch(G: torch.Tensor, H: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, maxq: int,
                  steps: int) -> torch.Tensor:
    """Same contract as cd_numba.cd_rows_numba on torch tensors (float64): q and G updated in place."""
    h = torch.diagonal(H)
    rows = torch.arange(q.shape[0], device=q.device)
    moves = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
    for _ in range(steps):
        c = torch.clamp(torch.round(q - G / (h * scale)), 0, maxq)
        d = scale * (c - q)
        gain = torch.where(c != q, 2.0 * d * G + d * d * h, torch.zeros_like(G))
        best, j = gain.min(dim=1)
        moving = best < 0
        if not bool(moving.any()):
            break
        step = torch.where(moving, d[rows, j], torch.zeros_like(best))
        q[rows, j] = torch.where(moving, c[rows, j], q[rows, j])
        G += step[:, None] * H[j]  # H is symmetric: row j is column j
        moves += moving
    return moves

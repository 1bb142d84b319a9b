"""CDQuant's greedy coordinate descent on the codes of every row, as a Numba kernel (CPU).

Rows are independent (the layer objective is a sum over output rows), so rows run in parallel (prange) and
each row's loop is sequential: every step scans all K coordinates for the single code change that lowers
(w - w_hat)^T H (w - w_hat) most, takes it, and updates the row's gradient with one column of H. A GEMM
cannot express the argmin-then-update chain and plain Python would pay an interpreter step per coordinate.
Compiled lazily on first call and cached on disk, never at import.
"""
from __future__ import annotations

import functools

import numpy as np


@functools.cache  # compiled (or loaded from numba's disk cache) on first use, never at import
def _compile():
    import numba

    @numba.njit(parallel=True, cache=True, fastmath=False)
    def descend(G, H, q, scale, maxq, steps, moves):
        n_rows, k = q.shape
        for n in numba.prange(n_rows):
            for _ in range(steps):
                best_gain, best_j, best_c = 0.0, -1, 0.0
                for j in range(k):
                    s = scale[n, j]
                    h = H[j, j]
                    # the best code along coordinate j: the grid point nearest the 1-D minimiser
                    c = min(max(np.rint(q[n, j] - G[n, j] / (h * s)), 0.0), maxq)
                    if c != q[n, j]:
                        d = s * (c - q[n, j])
                        gain = 2.0 * d * G[n, j] + d * d * h
                        if gain < best_gain:
                            best_gain, best_j, best_c = gain, j, c
                if best_j < 0:  # no change lowers the objective: a coordinate-wise minimum
                    break
                d = scale[n, best_j] * (best_c - q[n, best_j])
                q[n, best_j] = best_c
                for i in range(k):
                    G[n, i] += d * H[i, best_j]
                moves[n] += 1

    return descend


def cd_rows_numba(G: np.ndarray, H: np.ndarray, q: np.ndarray, scale: np.ndarray, maxq: int, steps: int) -> np.ndarray:
    """Greedy coordinate descent on q [N, K] (float64 codes, updated in place) with the per-column
    scales [N, K] (a move changes a code, never the zero point); G = (W_hat - W) H [N, K] (updated in place), H [K, K] symmetric float64.
    At most `steps` moves per row; returns the moves each row took."""
    for name, arr in {"G": G, "q": q, "scale": scale}.items():
        if arr.shape != q.shape or arr.dtype != np.float64 or not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous float64 array of shape {q.shape}")
    if H.shape != (q.shape[1],) * 2 or H.dtype != np.float64:
        raise ValueError(f"H must be float64 of shape {(q.shape[1],) * 2}")
    moves = np.zeros(q.shape[0], dtype=np.int64)
    _compile()(G, np.ascontiguousarray(H), q, scale, float(maxq), int(steps), moves)
    return moves

"""GPTQ's intra-block column sweep as a Numba kernel (CPU).

Rows are independent in GPTQ's sweep (the error of row n only feeds row n), so the kernel walks rows in
parallel and columns inside a row contiguously: cache-friendly, no Python per column. Compiled lazily on
first call and cached on disk, never at import.
"""
from __future__ import annotations

import functools

import numpy as np

from .checks import require_block_factor, require_c_float32


@functools.cache  # compiled (or loaded from numba's disk cache) on first use, never at import
def _compile():
    import numba

    @numba.njit(parallel=True, cache=True, fastmath=False)
    def sweep(W1, Hinv1, scale, zero, maxq, Q1, Err1):
        n_rows, n_cols = W1.shape
        for n in numba.prange(n_rows):
            for i in range(n_cols):
                w = W1[n, i]
                s = scale[n, i]
                z = zero[n, i]
                q = min(max(np.rint(w / s) + z, 0.0), maxq)
                err = (w - s * (q - z)) / Hinv1[i, i]
                Q1[n, i] = q
                Err1[n, i] = err
                for j in range(i + 1, n_cols):
                    W1[n, j] -= err * Hinv1[i, j]

    return sweep


def gptq_block_numba(W1: np.ndarray, Hinv1: np.ndarray, scale: np.ndarray, zero: np.ndarray, maxq: int):
    """Quantize columns of W1 [N, B] left to right with error feedback through Hinv1 (upper Cholesky).

    scale and zero are per column [N, B]. W1 is updated in place. Returns codes Q1 and scaled errors
    Err1 [N, B] (float32), the inputs of GPTQ's lazy update of the columns after the block.
    """
    n, b = W1.shape
    require_c_float32({"W1": W1, "scale": scale, "zero": zero}, (n, b))
    require_block_factor(Hinv1, b)
    Q1 = np.empty_like(W1)
    Err1 = np.empty_like(W1)
    _compile()(W1, np.ascontiguousarray(Hinv1), scale, zero, np.float32(maxq), Q1, Err1)
    return Q1, Err1

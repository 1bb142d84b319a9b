"""Input checks shared by the Numba kernels' public wrappers: a wrong dtype or layout reaching an @njit
function either recompiles it for that type or reads memory wrongly, so refuse it first."""
from __future__ import annotations

import numpy as np


def require_c_float32(arrays: dict[str, np.ndarray], shape: tuple) -> None:
    for name, arr in arrays.items():
        if arr.shape != shape or arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous float32 array of shape {shape}")


def require_block_factor(Hinv1: np.ndarray, b: int) -> None:
    if Hinv1.shape != (b, b) or Hinv1.dtype != np.float32:
        raise ValueError(f"Hinv1 must be float32 of shape {(b, b)}")

"""Matryoshka bit slicing (MatQuant): the r-bit weight inside a c-bit one, with no torch so that a device
can slice exported initializers with numpy alone.

The r most significant bits of a c-bit code q, rounded: S(q, r) = clamp(round_half_up(q / 2^d), 0, 2^r - 1)
with d = c - r. The sliced weight keeps the grid's origin: scale_r = scale * 2^d and zero_r = zero / 2^d,
which is an integer (MatMulNBits' fast path) only when the c-bit zero point is a multiple of 2^d. Symmetric
int8 (zero 128) slices to zero 2^(r-1) at every width, MatMulNBits' default.

Works on numpy arrays and torch tensors alike (only operators and .clip).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgeqError

DEFAULT_WIDTHS = (8, 4, 2)
# For DEFAULT_WIDTHS. Equal weights let the 2-bit error, ~16x the 4-bit one, decide nearly every code;
# on SmolLM2's block 2 (layer error vs each width's own GPTQ, geometric mean over its 7 linears):
# 1,1,1 -> int8 353x, int4 2.38x, int2 1.48x; 4,4,1 -> 165x, 1.70x, 1.77x; 16,16,1 -> 78x, 1.45x, 2.27x.
DEFAULT_WEIGHTS = (4.0, 4.0, 1.0)


def default_weights(widths) -> list[float]:
    return list(DEFAULT_WEIGHTS) if tuple(widths) == DEFAULT_WIDTHS else [1.0] * len(widths)


def zero_step(master_bits: int, min_bits: int) -> int:
    """The multiple every master zero point must be for all widths down to min_bits to slice exactly."""
    return 1 << (master_bits - min_bits)


def slice_codes(q, master_bits: int, bits: int):
    """S(q, bits) of integer codes held in a type at least 16 bits wide (255 + 2^(d-1) overflows uint8)."""
    drop = master_bits - bits
    return ((q + ((1 << drop) >> 1)) >> drop).clip(0, (1 << bits) - 1)


def slice_zero(zero, master_bits: int, bits: int):
    """zero / 2^d for integer zero points (any int type), refused when one is not a multiple of 2^d."""
    drop = master_bits - bits
    if ((zero % (1 << drop)) != 0).any():
        raise EdgeqError(f"zero points are not multiples of {1 << drop}, so the {bits}-bit slice of these "
                         f"{master_bits}-bit weights has no integer zero point; quantize with --method "
                         f"matquant (or --sym) to get sliceable weights")
    return zero >> drop


def check_widths(master_bits: int, bits: int) -> None:
    if not 1 <= bits <= master_bits:
        raise EdgeqError(f"cannot slice {master_bits}-bit weights to {bits} bits (choose 1..{master_bits})")


def constant_slice_segments(master_bits: int, low_bits: list[int]):
    """The master codes cut into runs on which every lower width's slice is constant.

    Returns (lo, hi, values): run j covers codes lo[j]..hi[j]; values[j, t] is the slice of width
    low_bits[t] there, back in master-code units (S * 2^d). Inside a run only the master width's error
    varies with the code, so the best code of a run is the master rounding clamped into it: the exact
    multi-width argmin needs one candidate per run (19 for 8/4/2) instead of 256."""
    codes = np.arange(1 << master_bits, dtype=np.int32)
    values = np.stack([slice_codes(codes, master_bits, b) << (master_bits - b) for b in low_bits], axis=1) \
        if low_bits else np.zeros((codes.size, 0), dtype=np.int32)
    starts = np.flatnonzero(np.r_[True, (values[1:] != values[:-1]).any(axis=1)])
    ends = np.r_[starts[1:] - 1, codes.size - 1]
    return starts.astype(np.float32), ends.astype(np.float32), values[starts].astype(np.float32)


@dataclass(frozen=True, eq=False)
class MultiWidthLoss:
    """sum_r weight_r (u - v_r(c))^2 over the widths r, for a master code c and a continuous code u
    (w / scale + zero); what MatQuant minimises per weight. Arrays are what the kernels take."""

    master_bits: int
    master_weight: float
    low_bits: tuple           # the lower widths, widest first
    low_weights: np.ndarray   # float64 [R], one per lower width
    lo: np.ndarray            # float32 [S], the runs of constant_slice_segments
    hi: np.ndarray
    values: np.ndarray        # float32 [S, R]

    @classmethod
    def of(cls, widths, weights=None) -> "MultiWidthLoss":
        widths = [int(b) for b in widths]
        weights = default_weights(widths) if weights is None else [float(x) for x in weights]
        if len(weights) != len(widths) or min(weights) < 0 or sum(weights) <= 0:
            raise EdgeqError(f"need one non-negative weight per width ({len(widths)}), not all zero; got {weights}")
        if len(set(widths)) != len(widths) or not all(2 <= b <= 8 for b in widths):
            raise EdgeqError(f"widths must be distinct integers from 2 to 8, got {widths}")
        master = max(widths)
        by_width = dict(zip(widths, weights))
        low = sorted((b for b in widths if b != master), reverse=True)
        lo, hi, values = constant_slice_segments(master, low)
        low_weights = np.array([by_width[b] for b in low], dtype=np.float64)
        return cls(master, by_width[master], tuple(low), low_weights, lo, hi, values)

    @property
    def weighted_widths(self) -> list[tuple[int, float]]:
        """[(bits, weight)] for every width, the master's first."""
        return [(self.master_bits, self.master_weight), *zip(self.low_bits, map(float, self.low_weights))]

    @property
    def total_weight(self) -> float:
        return self.master_weight + float(self.low_weights.sum())

"""Bit packing: the one place that knows bit order. numpy only, so the runtime side can use it too.

Codes are a little-endian bit stream along the last axis: value i occupies bits [i*b, (i+1)*b) counted
from the least significant bit of byte 0. For 2, 4 and 8 bits this is exactly onnxruntime's MatMulNBits
layout (first value in the low bits of the byte); 3-bit values simply straddle byte boundaries.
"""
from __future__ import annotations

import numpy as np


# The widths onnxruntime's MatMulNBits runs (2, 4, 8) and the one each stored width is written in: 3-bit codes
# live in the 4-bit container unchanged (values 0..7).
CONTAINER = {2: 2, 3: 4, 4: 4, 8: 8}


def packed_length(count: int, bits: int) -> int:
    return -(-count * bits // 8)


def pack_codes(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [..., n] -> packed uint8 [..., ceil(n * bits / 8)]."""
    q = np.asarray(q, dtype=np.uint8)
    if q.size and int(q.max()) >= 1 << bits:
        raise ValueError(f"a code does not fit in {bits} bits")
    n = q.shape[-1]
    bit_planes = (q[..., None] >> np.arange(bits, dtype=np.uint8)) & 1  # [..., n, bits], LSB first
    stream = bit_planes.reshape(*q.shape[:-1], n * bits)
    return np.packbits(stream, axis=-1, bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_codes: packed uint8 [..., bytes] -> codes uint8 [..., count]."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] < packed_length(count, bits):
        raise ValueError(f"{packed.shape[-1]} bytes cannot hold {count} codes of {bits} bits")
    stream = np.unpackbits(packed, axis=-1, count=count * bits, bitorder="little")
    bit_planes = stream.reshape(*packed.shape[:-1], count, bits)
    weights = (1 << np.arange(bits)).astype(np.uint8)
    return (bit_planes * weights).sum(axis=-1, dtype=np.uint8)


def pack_blocks(q: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Codes [N, K] -> MatMulNBits B [N, ceil(K/block), block*bits/8]; K is zero-padded to whole blocks."""
    n, k = q.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), dtype=np.uint8)
    padded[:, :k] = q
    return pack_codes(padded.reshape(n, blocks, block), bits)


def unpack_blocks(b: np.ndarray, bits: int, block: int, k: int) -> np.ndarray:
    """MatMulNBits B [N, blocks, bytes] -> codes [N, K] (the padding dropped)."""
    n, blocks, _ = b.shape
    return unpack_codes(b, bits, block).reshape(n, blocks * block)[:, :k]

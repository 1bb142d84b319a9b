"""A QuantizedWeight as the tensors of a com.microsoft::MatMulNBits node: the codes, scales and integer
zero points are ours, packed, never re-quantized.

What onnxruntime 1.32's CPU kernel accepts (measured): bits 2, 4, 8; power-of-two blocks >= 16; 2-bit
only up to block 128 on the fast path. 3-bit codes go into the 4-bit container unchanged (values 0..7).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import pack
from ..errors import EdgeqError
from ..qweight import QuantizedWeight

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class NodeLayout:
    bits: int          # container width written to the node (3-bit codes live in 4)
    block: int         # MatMulNBits block_size
    blocks: int        # blocks per row


def node_layout(name: str, qw: QuantizedWeight) -> NodeLayout:
    """How a QuantizedWeight maps onto MatMulNBits, or a clear refusal."""
    return layout_for(name, qw.shape[1], qw.bits, qw.group_size)


def layout_for(name: str, k: int, stored_bits: int, group_size: int) -> NodeLayout:
    """The MatMulNBits layout of a weight with K inputs on this grid (3-bit goes to the 4-bit container)."""
    bits = pack.CONTAINER.get(stored_bits)
    if bits is None:
        raise EdgeqError(f"{name}: {stored_bits}-bit weights cannot run in onnxruntime's MatMulNBits "
                         f"(it runs 2, 4 and 8 bits; 3-bit is stored as 4); quantize with --bits 2, 3, 4 or 8")
    per_channel = group_size >= k or group_size == -1
    block = 1 << max(4, (k - 1).bit_length()) if per_channel else group_size
    if not per_channel and (block < 16 or block & (block - 1)):
        raise EdgeqError(f"{name}: group size {group_size} is not a power of two >= 16")
    if bits == 2 and block > 128:
        raise EdgeqError(f"{name}: 2-bit with block {block} has no fast MatMulNBits kernel (2-bit is fast only "
                         f"at blocks 32, 64, 128); quantize 2-bit with --group-size 32, 64 or 128")
    return NodeLayout(bits, block, -(-k // block))


def initializer_bytes(n: int, layout: NodeLayout) -> int:
    """Bytes of B, scales (float32) and packed zero points that node_tensors writes for N output rows."""
    b = n * layout.blocks * layout.block * layout.bits // 8
    zeros = n * pack.packed_length(layout.blocks, layout.bits)  # packed row by row
    return b + 4 * n * layout.blocks + zeros


def node_tensors(qw: QuantizedWeight, layout: NodeLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B uint8 [N, blocks, block*bits/8], scales float32 [N*blocks], zero_points uint8 packed per row)."""
    b = pack.pack_blocks(qw.q.numpy(), layout.bits, layout.block)
    scales = qw.scale.numpy().astype(np.float32).reshape(-1)
    zeros = pack.pack_codes(qw.zero.numpy(), layout.bits)
    if layout.bits == 8:
        zeros = zeros.reshape(qw.shape[0], -1)
    return b, scales, zeros.reshape(-1)

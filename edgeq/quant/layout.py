"""A QuantizedWeight as the tensors of a com.microsoft::MatMulNBits node: the codes, scales and integer
zero points are ours, packed, never re-quantized.

What onnxruntime 1.32's CPU kernel accepts (measured): bits 2, 4, 8; power-of-two blocks >= 16; 2-bit
only up to block 128 on the fast path. 3-bit codes go into the 4-bit container unchanged (values 0..7).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from typing import TYPE_CHECKING

from . import pack
from ..errors import EdgeqError

if TYPE_CHECKING:  # qweight needs torch; this module is read on the device too
    from .qweight import QuantizedWeight

MS_DOMAIN = "com.microsoft"
HEAD_WIDTHS = {"fp": None, "8": 8, "4": 4}  # --lm-head choices (quantize, export) -> bits (None: float head)


@dataclass(frozen=True)
class NodeLayout:
    bits: int          # container width written to the node (3-bit codes live in 4)
    block: int         # MatMulNBits block_size
    blocks: int        # blocks per row


def node_layout(name: str, qw: QuantizedWeight) -> NodeLayout:
    """How a QuantizedWeight maps onto MatMulNBits, or a clear refusal."""
    return layout_for(name, qw.shape[1], qw.bits, qw.group_size)


# Padding above which blocks shrink to tile K (measured, SmolLM2 GPTQ W4 + 8-bit head, 2 threads, one
# interleaved `edgeq bench`): per-channel K = 576 padded to 1024 (78%) vs blocks of 64: file -24%, decode
# -8%, prefill +8%; g128 on K = 576 (11%) vs blocks of 64: file -2%, decode +1..5%, prefill +9%.
MAX_PADDING = 0.25


def layout_for(name: str, k: int, stored_bits: int, group_size: int) -> NodeLayout:
    """The MatMulNBits layout of a weight with K inputs on this grid (3-bit goes to the 4-bit container).

    A group that does not tile K (one group per row of 576, or g128 on K = 576 = 4.5 x 128) pads the last
    block with zero codes. Where that pads more than MAX_PADDING of K, or 2-bit needs blocks of at most 128,
    the blocks shrink to the largest power of two (>= 16) dividing both, each block repeating its group's
    scale and zero point: the same weights, no padded bytes."""
    bits = pack.CONTAINER.get(stored_bits)
    if bits is None:
        raise EdgeqError(f"{name}: {stored_bits}-bit weights cannot run in onnxruntime's MatMulNBits "
                         f"(it runs 2, 4 and 8 bits; 3-bit is stored as 4); quantize with --bits 2, 3, 4 or 8")
    per_channel = group_columns(k, group_size) == k
    block = 1 << max(4, (k - 1).bit_length()) if per_channel else group_size
    if not per_channel and (block < 16 or block & (block - 1)):
        raise EdgeqError(f"{name}: group size {group_size} is not a power of two >= 16")
    tiling = math.gcd(block, k)  # block is a power of two: the largest power of two dividing both
    padding = (-k % block) / k
    if tiling >= 16 and padding and (padding > MAX_PADDING or (bits == 2 and block > 128)):
        block = tiling
    if bits == 2 and block > 128 and not k % 128:
        block = 128  # a smaller block still tiles K, repeating the scales: the fast 2-bit kernel's size
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
    group_of_block = block_groups(qw, layout)  # blocks smaller than the groups repeat their group's
    scales = qw.scale.numpy().astype(np.float32)[:, group_of_block].reshape(-1)
    zeros = pack.pack_codes(np.ascontiguousarray(qw.zero.numpy()[:, group_of_block]), layout.bits)
    if layout.bits == 8:
        zeros = zeros.reshape(qw.shape[0], -1)
    return b, scales, zeros.reshape(-1)


def block_groups(qw: QuantizedWeight, layout: NodeLayout) -> np.ndarray:
    """The group index of each MatMulNBits block of the row (all 0 per channel)."""
    return np.arange(layout.blocks) * layout.block // group_columns(qw.shape[1], qw.group_size)


def group_columns(k: int, group_size: int) -> int:
    """The columns one scale covers: the group, or the whole row (per channel: -1, or a group >= K)."""
    return k if group_size == -1 or group_size >= k else group_size


def shares_codes_with_lookup(qw: QuantizedWeight, layout: NodeLayout) -> bool:
    """MatMulNBits' B holds exactly the bytes of a [V, K] 8- or 4-bit table when no block is padded; only
    then can one initializer serve both nodes (GatherBlockQuantized takes 4 and 8 bits), and only when the
    columns are in the table's own order (no act-order input_order)."""
    return layout.bits in (4, 8) and qw.shape[1] % layout.block == 0 and qw.input_order is None

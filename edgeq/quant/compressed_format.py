"""The compressed-tensors `pack-quantized` tensors of one linear, as llm-compressor (and auto-round's
llm_compressor output) write them through the compressed-tensors library, and vLLM and transformers read them:

    NAME.weight_packed      int32 [N, ceil(K * bits / 32)]  codes + 2^(bits-1), a dense little-endian bit stream
                                                            along K (a code may straddle two words at 3, 5, 6, 7 bits)
    NAME.weight_scale       float [N, G]                    (G = 1 per channel)
    NAME.weight_zero_point  int32 [ceil(N * bits / 32), G]  asymmetric only: zero + 2^(bits-1), packed along N
    NAME.weight_shape       int64 [2]                       (N, K)
    NAME.weight_g_idx       int32 [K]                       activation order, when there is one

W = scale * (q - zero) with both shifted into the unsigned range, which is edgeq's own convention; a symmetric
linear's zero is 2^(bits-1). Read by io/folder_readers.py: the format is known here only."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import EdgeqError
from .grid import n_groups, stored_group
from .pack import unpack_codes
from .qweight import QuantizedWeight

STRATEGIES = ("group", "channel", "tensor")  # weight strategies read; "block" (2-D tiles, FP8's) is not


def unpack_stream(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """int32 [R, W] -> [R, count] unsigned codes: element i of a row at bit i * bits of the row's little-endian
    bit stream (compressed-tensors' pack_to_int32 along its last dimension): the little-endian words' bytes are
    quant/pack.py's own stream."""
    if words.shape[1] * 32 < count * bits:
        raise EdgeqError(f"{words.shape[1]} int32 words a row cannot hold {count} {bits}-bit codes")
    return unpack_codes(words.astype("<i4").view(np.uint8).reshape(words.shape[0], -1), bits, count)


def qweight_from_compressed(tensors: dict[str, torch.Tensor], name: str, weights: dict) -> QuantizedWeight:
    """One linear as a QuantizedWeight; `weights` is its config group's weights entry (num_bits, symmetric,
    strategy, group_size)."""
    bits, strategy = int(weights["num_bits"]), str(weights.get("strategy", "group"))
    if strategy not in STRATEGIES:
        raise EdgeqError(f"{name}: compressed-tensors strategy {strategy!r} is not read ({', '.join(STRATEGIES)} are)")
    if f"{name}.weight_shape" not in tensors or f"{name}.weight_scale" not in tensors:
        raise EdgeqError(f"{name}: the compressed-tensors folder has no weight_shape or weight_scale for it")
    n, k = (int(v) for v in tensors[f"{name}.weight_shape"].tolist())
    q = unpack_stream(tensors[f"{name}.weight_packed"].numpy(), bits, k)
    if q.shape[0] != n:
        raise EdgeqError(f"{name}: weight_packed holds {q.shape[0]} rows, weight_shape says {n}")
    scale = tensors[f"{name}.weight_scale"].float().reshape(n, -1) if strategy != "tensor" else \
        tensors[f"{name}.weight_scale"].float().reshape(1, 1).expand(n, 1)
    group = stored_group(int(weights["group_size"]) if strategy == "group" else -1, k)
    if scale.shape[1] != n_groups(k, group):
        raise EdgeqError(f"{name}: weight_scale of shape {tuple(scale.shape)}, expected {(n, n_groups(k, group))}")
    zero = _zero_points(tensors, name, bits, weights, scale.shape)
    g_idx = tensors.get(f"{name}.weight_g_idx")  # actorder "group" (llm-compressor before 2026-08)
    return QuantizedWeight.from_input_columns(torch.from_numpy(q), scale.contiguous(), zero, bits, group, g_idx, name)


def _zero_points(tensors, name, bits, weights, shape) -> torch.Tensor:
    if weights.get("symmetric", True):
        return torch.full(shape, 1 << (bits - 1), dtype=torch.uint8)
    packed = tensors.get(f"{name}.weight_zero_point")
    if packed is None:
        raise EdgeqError(f"{name}: asymmetric compressed-tensors weights without weight_zero_point")
    if packed.dtype != torch.int32:  # older writers kept the zero points unpacked, signed int8
        return (packed.to(torch.int16).reshape(shape) + (1 << (bits - 1))).to(torch.uint8)
    zero = unpack_stream(packed.numpy().T.copy(), bits, shape[0]).T  # packed along N
    return torch.from_numpy(np.ascontiguousarray(zero))


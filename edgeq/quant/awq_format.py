"""The AWQ GEMM tensors of one linear, as AutoAWQ and auto-round's auto_awq output write them and transformers,
vLLM and onnxruntime-genai's builder read them (W = scale * (q - zero), groups along K):

    NAME.qweight  int32 [K, N * bits / 32]   the codes of 8 consecutive outputs per word, interleaved:
                                             slot i (bits 4i .. 4i + 3) holds output column AWQ_ORDER[i]
    NAME.qzeros   int32 [G, N * bits / 32]   the zero points as they are, packed the same way
    NAME.scales   float16 [G, N]

The interleave is AutoAWQ's (it suits its GEMM kernel's dequantization), and 4 bits is the only width GEMM
packing defines. Read by io/folder_readers.py: the format is known here only."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import EdgeqError
from .grid import n_groups, stored_group
from .qweight import QuantizedWeight

AWQ_BITS = 4
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # slot -> the column of its pack of 8
COLUMN_SLOT = tuple(int(i) for i in np.argsort(AWQ_ORDER))  # column -> its slot


def unpack_columns(words: np.ndarray) -> np.ndarray:
    """int32 [R, C / 8] AWQ words -> [R, C] 4-bit codes in column order."""
    shifts = (np.arange(8, dtype=np.uint32) * AWQ_BITS)[None, None, :]
    slots = (words.view(np.uint32)[:, :, None] >> shifts) & 0xF  # [R, C / 8, slot]
    return slots[:, :, list(COLUMN_SLOT)].reshape(words.shape[0], -1)


def qweight_from_awq(tensors: dict[str, torch.Tensor], name: str, bits: int, group_size: int) -> QuantizedWeight:
    """One linear of an AWQ GEMM folder as a QuantizedWeight (codes and zero points as stored, the float16 scales
    widened). group_size -1 is per-channel."""
    if bits != AWQ_BITS:
        raise EdgeqError(f"{name}: {bits}-bit AWQ GEMM packing is not read (AWQ's GEMM packs 4 bits)")
    for part in ("qweight", "qzeros", "scales"):
        if f"{name}.{part}" not in tensors:
            raise EdgeqError(f"{name}: the AWQ folder has no {name}.{part}")
    q = unpack_columns(tensors[f"{name}.qweight"].numpy())  # [K, N]
    k, n = q.shape
    group = stored_group(group_size, k)
    groups = n_groups(k, group)
    scales, zero = tensors[f"{name}.scales"], unpack_columns(tensors[f"{name}.qzeros"].numpy())
    for part, shape in (("scales", tuple(scales.shape)), ("qzeros", zero.shape)):
        if shape != (groups, n):
            raise EdgeqError(f"{name}: {part} of shape {shape}, expected {(groups, n)} for [{n}, {k}] in groups "
                             f"of {group}")
    return QuantizedWeight(torch.from_numpy(np.ascontiguousarray(q.T).astype(np.uint8)),
                           scales.float().T.contiguous(), torch.from_numpy(np.ascontiguousarray(zero.T).astype(np.uint8)),
                           bits, group)

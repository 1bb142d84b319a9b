"""The GPTQ (v1) tensors of one linear, as AutoGPTQ, GPTQModel and auto-round write them and transformers, vLLM
and onnxruntime-genai's builder read them (W = scale * (q - zero), groups along K):

    NAME.qweight  int32 [K * bits / 32, N]   the codes of 32 / bits consecutive inputs per word, LSB first
    NAME.qzeros   int32 [G, N * bits / 32]   zero point - 1 (v1's convention, which every reader adds back)
    NAME.scales   float16 [G, N]
    NAME.g_idx    int32 [K]                  each input's group (k // group size without act-order; with
                                             act-order (desc_act) the rank of the input in the sweep // group)

Written by export/gptq.py, read by io/folder_readers.py: the format is known here only."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import EdgeqError
from .grid import n_groups, stored_group
from .pack import CONTAINER as CONTAINER_BITS  # code width -> the packed width every GPTQ reader unpacks
from .qweight import QuantizedWeight

FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def container_bits(name: str, qw: QuantizedWeight) -> int:
    if qw.bits not in CONTAINER_BITS:
        raise EdgeqError(f"{name}: {qw.bits}-bit codes have no GPTQ packing (2, 3 in 4, 4 and 8 bits do)")
    return CONTAINER_BITS[qw.bits]


def written_group(qw: QuantizedWeight) -> int:
    """The group size in the folder: the checkpoint's, or the largest one dividing both it and K (exact: the
    smaller groups repeat their group's parameters). Per-channel is one group of K."""
    k = qw.shape[1]
    return k if qw.group_size >= k else math.gcd(qw.group_size, k)


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """[R, C] codes -> int32 [R * bits / 32, C]: word j of a column holds rows j*n .. j*n + n - 1 (n = 32 / bits),
    row j*n + i at bit i * bits."""
    per_word = 32 // bits
    if values.shape[0] % per_word:
        raise EdgeqError(f"{values.shape[0]} rows do not fill {bits}-bit int32 words ({per_word} a word)")
    v = values.astype(np.uint32).reshape(-1, per_word, values.shape[1])
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, :, None]
    return np.ascontiguousarray(np.bitwise_or.reduce(v << shifts, axis=1)).view(np.int32)


def unpack_rows(words: np.ndarray, bits: int) -> np.ndarray:
    """int32 [R * bits / 32, C] -> [R, C] codes (pack_rows' inverse)."""
    per_word = 32 // bits
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)[None, :, None]
    v = (words.view(np.uint32)[:, None, :] >> shifts) & ((1 << bits) - 1)
    return v.reshape(-1, words.shape[1])


def gptq_tensors(name: str, qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """NAME.qweight / qzeros / scales / g_idx of one linear (the module docstring's layout)."""
    bits, group = container_bits(name, qw), written_group(qw)
    n, k = qw.shape
    repeat = 1 if qw.group_size >= k else qw.group_size // group
    groups = k // group
    scale = qw.scale.repeat_interleave(repeat, dim=1)[:, :groups]
    zero = qw.zero.to(torch.int64).repeat_interleave(repeat, dim=1)[:, :groups]
    if float(scale.abs().max()) > FLOAT16_MAX:
        raise EdgeqError(f"{name}: a scale of {float(scale.abs().max()):.3g} overflows GPTQ's float16 scales")
    if (n * bits) % 32 or (k * bits) % 32:
        raise EdgeqError(f"{name}: [{n}, {k}] does not fill {bits}-bit int32 words; GPTQ cannot store it")
    stored_zero = (zero.T.numpy() - 1) & ((1 << bits) - 1)  # v1: zero - 1, wrapped as the writers wrap it
    return {f"{name}.qweight": torch.from_numpy(pack_rows(qw.codes_in_input_order().T.numpy(), bits)),
            f"{name}.qzeros": torch.from_numpy(pack_rows(stored_zero.T, bits).T.copy()),
            f"{name}.scales": scale.T.contiguous().to(torch.float16),
            f"{name}.g_idx": g_idx_of(qw, group)}


def g_idx_of(qw: QuantizedWeight, group: int) -> torch.Tensor:
    """int32 [K]: each input's group; an act-order weight's inputs keep the groups of their held columns."""
    held = torch.arange(qw.shape[1], dtype=torch.int32) // group
    if qw.input_order is None:
        return held
    g_idx = torch.empty_like(held)
    g_idx[qw.input_order] = held
    return g_idx


def dequantize_gptq(tensors: dict[str, torch.Tensor], name: str, bits: int) -> torch.Tensor:
    """[N, K] float32 weight of a v1 GPTQ linear, read from its tensors by the format alone (the export's
    check, and the reader of other tools' GPTQ folders)."""
    q = unpack_rows(tensors[f"{name}.qweight"].numpy(), bits).astype(np.float32)  # [K, N]
    zero = unpack_rows(tensors[f"{name}.qzeros"].numpy().T, bits).T  # [G, N], stored - 1
    zero = ((zero.astype(np.int64) + 1) & ((1 << bits) - 1)).astype(np.float32)
    g_idx = tensors[f"{name}.g_idx"].numpy().astype(np.int64)
    scale = tensors[f"{name}.scales"].float().numpy()
    return torch.from_numpy((scale[g_idx] * (q - zero[g_idx])).T.copy())


def qweight_from_gptq(tensors: dict[str, torch.Tensor], name: str, bits: int, group_size: int,
                      zero_offset: int = 1) -> QuantizedWeight:
    """One linear of a GPTQ folder as a QuantizedWeight (the codes and zero points as stored, the float16 scales
    widened). group_size -1 is per-channel. zero_offset is what the writer subtracted from each zero point (1 in
    v1, what every tool saves; 0 in v2). An act-order g_idx (desc_act) is held as QuantizedWeight.input_order:
    the columns sorted by group."""
    if bits not in (2, 4, 8):
        raise EdgeqError(f"{name}: {bits}-bit GPTQ packing is not read (2, 4 and 8 bits are)")
    for part in ("qweight", "qzeros", "scales"):
        if f"{name}.{part}" not in tensors:
            raise EdgeqError(f"{name}: the GPTQ folder has no {name}.{part}")
    q = unpack_rows(tensors[f"{name}.qweight"].numpy(), bits)  # [K, N]
    k, n = q.shape
    group = stored_group(group_size, k)
    groups = n_groups(k, group)
    scales = tensors[f"{name}.scales"]
    if tuple(scales.shape) != (groups, n):
        raise EdgeqError(f"{name}: scales of shape {tuple(scales.shape)}, expected {(groups, n)} for "
                         f"[{n}, {k}] in groups of {group}")
    stored = unpack_rows(tensors[f"{name}.qzeros"].numpy().T, bits).T  # [G, N]
    if stored.shape != (groups, n):
        raise EdgeqError(f"{name}: qzeros unpack to {stored.shape}, expected {(groups, n)}")
    zero = (stored.astype(np.int64) + zero_offset) & ((1 << bits) - 1)  # wrapped as the writers wrap it
    return QuantizedWeight.from_input_columns(torch.from_numpy(np.ascontiguousarray(q.T).astype(np.uint8)),
                                              scales.float().T.contiguous(),
                                              torch.from_numpy(zero.T.astype(np.uint8).copy()), bits, group,
                                              tensors.get(f"{name}.g_idx"), name)

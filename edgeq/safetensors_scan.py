"""Reading safetensors tensors one at a time with pread, without mapping the file: a check over every
weight then costs one tensor of memory, where a mapped read keeps the whole file resident until closed."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

# exponent masks: a float is NaN or infinite exactly when all its exponent bits are set
_NON_FINITE = {"F64": (np.uint64, 0x7FF0000000000000), "F32": (np.uint32, 0x7F800000),
               "F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80)}


def header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(length))
    meta.pop("__metadata__", None)
    return meta, 8 + length


def non_finite_tensors(path: Path, chunk_bytes: int = 1 << 24):
    """Names of float tensors in the file holding a NaN or an infinity."""
    meta, data_start = header(path)
    bad = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for name, info in meta.items():
            if info["dtype"] not in _NON_FINITE:
                continue
            dtype, mask = _NON_FINITE[info["dtype"]]
            begin, end = info["data_offsets"]
            step = chunk_bytes - chunk_bytes % np.dtype(dtype).itemsize
            for offset in range(begin, end, step):
                raw = os.pread(fd, min(step, end - offset), data_start + offset)
                if (np.frombuffer(raw, dtype=dtype) & dtype(mask) == mask).any():
                    bad.append(name)
                    break
    finally:
        os.close(fd)
    return bad

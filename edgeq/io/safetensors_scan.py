"""Reading safetensors files by hand: tensors one at a time with pread, without mapping the file (a check
over every weight then costs one tensor of memory, where a mapped read keeps the whole file resident until
closed), and float32 tables mapped copy-on-write where only the rows read should become resident."""
from __future__ import annotations

import functools
import json
import os
import struct
import weakref
from pathlib import Path

import numpy as np

# exponent masks: a float is NaN or infinite exactly when all its exponent bits are set
_NON_FINITE = {"F64": (np.uint64, 0x7FF0000000000000), "F32": (np.uint32, 0x7F800000),
               "F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80)}

WEIGHTS = "model.safetensors"                # a folder's one weights file
INDEX = "model.safetensors.index.json"       # a sharded folder's tensor -> file map


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


_MAPPED: list[tuple[int, int]] = []  # address ranges of map_float32's live mappings
_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now; a clean file page is dropped, nothing is lost


@functools.cache
def _madvise():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    return lambda address, nbytes, advice: libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(nbytes), advice)


def release_mapped(address: int, nbytes: int) -> None:
    """Hand back to the kernel the whole pages of [address, address + nbytes) that lie in a mapped table,
    once read (a copy-on-write page that was written is not dropped: PAGEOUT only reclaims what it may).
    A no-op for any other memory, and where the kernel refuses the advice."""
    import mmap
    for begin, end in _MAPPED:
        lo = max(address, begin)
        lo += -lo % mmap.PAGESIZE
        hi = min(address + nbytes, end)
        hi -= hi % mmap.PAGESIZE
        if hi > lo:
            _madvise()(lo, hi - lo, _MADV_PAGEOUT)


def release_mapped_tables() -> None:
    """Hand back every resident page of every mapped table. Reading a few rows of a mapped table makes far
    more than those rows resident: the kernel maps the cached pages around each fault too (fault-around,
    64 KB), so the embedding lookups of calibration left 566 MB of a 1.5B model's 933 MB embedding
    resident through the whole block loop, which never reads it. Pages fault back in when read again."""
    for begin, end in list(_MAPPED):
        release_mapped(begin, end - begin)


def map_float32(path: Path, names) -> dict:
    """{name: tensor} for the float32 tensors among `names`, backed by a private (copy-on-write) mapping of
    the file instead of a copy in memory: a table read a few rows at a time (the embedding, during
    calibration) then costs only the pages touched, and the kernel may drop them again. Other dtypes are
    left out (they need converting, hence a copy)."""
    import mmap

    import torch
    meta, data_start = header(path)
    wanted = [n for n in names if meta.get(n, {}).get("dtype") == "F32"]
    if not wanted:
        return {}
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # stays open while a tensor uses it
    base = torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr()
    span = (base, base + len(mapping))
    _MAPPED.append(span)
    weakref.finalize(mapping, _MAPPED.remove, span)  # unmapped once no tensor holds it
    out = {}
    for name in wanted:
        begin, end = meta[name]["data_offsets"]
        flat = torch.frombuffer(mapping, dtype=torch.float32, count=(end - begin) // 4, offset=data_start + begin)
        out[name] = flat.view(meta[name]["shape"])
    return out

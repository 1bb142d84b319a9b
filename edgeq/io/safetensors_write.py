"""Writing safetensors files (and hashing tensors) a chunk at a time, handing the pages of mapped tables back.

Written by hand because safetensors' save_file reads each tensor whole: a float table mapped from the float
cache (safetensors_scan.map_float32; a 1.5B model's embedding and untied head are 1.87 GB) then became
resident all at once when a checkpoint was saved, and again when it was hashed. Here every chunk of a
mapped table is handed back to the kernel once read (`release_mapped`), so saving a checkpoint holds one
chunk of such a table. The file is the format safetensors reads: an 8-byte little-endian header length,
the JSON header (sorted keys, padded with spaces to 8 bytes), then the tensors back to back, widest
element first so that every tensor stays aligned to its element size.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from .safetensors_scan import release_mapped

CHUNK_BYTES = 1 << 26  # 64 MB

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def byte_chunks(tensor: torch.Tensor, chunk_bytes: int = CHUNK_BYTES):
    """The tensor's bytes (C order) in chunks of memoryview; pages of a mapped table are released after each."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    for start in range(0, flat.numel(), chunk_bytes):
        part = flat[start:start + chunk_bytes]
        yield memoryview(part.numpy())
        release_mapped(part.data_ptr(), part.numel())


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        if t.dtype not in DTYPES:
            raise TypeError(f"{name}: cannot store {t.dtype} in safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name in order:
            for chunk in byte_chunks(tensors[name]):
                f.write(chunk)


def write_as_float32(path: Path, source: Path, name: str, chunk_bytes: int = CHUNK_BYTES) -> None:
    """One tensor of a safetensors file (bf16, fp16) converted to float32 into a file of its own, a slab of
    rows at a time: a 1.5B model's bf16 embedding becomes 933 MB of float32 without ever being whole in
    memory (the float cache of a bf16 model's tables; models.float32_tables)."""
    from safetensors import safe_open
    with safe_open(str(source), "pt") as f:
        part = f.get_slice(name)
        shape = list(part.get_shape())
        rows = max(1, chunk_bytes // (4 * max(1, int(torch.tensor(shape[1:]).prod()))))
        size = 4 * int(torch.tensor(shape).prod())
        raw = json.dumps({"tensor": {"dtype": "F32", "shape": shape, "data_offsets": [0, size]}},
                         separators=(",", ":"), sort_keys=True).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            for start in range(0, shape[0], rows):
                out.write(memoryview(part[start:start + rows].float().contiguous().numpy()).cast("B"))

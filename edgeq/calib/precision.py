"""The calibration forward's arithmetic: the block forwards that feed the Hessians and carry the states to the
next block run their matrix products in bfloat16 where the hardware has native bf16 GEMMs (x86 AVX512-BF16 or
AMX, Arm's BF16, CUDA), in float32 elsewhere or when asked. The states between blocks, the Hessian sums and
every solver stay float32: only the products' inputs are rounded, each product still accumulating in float32.

Why: on 2 cores the forward and the Hessians of GPTQ W4 g128 ran at the float32 GEMM floor (benchmarks/
quantize_speed.py), and this CPU's bf16 GEMM runs the forward's shapes ~2.9x faster."""
from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

from ..config import CALIB_DTYPES
from ..errors import EdgeqError

_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # x86 /proc/cpuinfo flags of a native bf16 dot product


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN then runs bf16 GEMMs faster than float32; on a CPU
    without, it emulates them, slower). Linux x86 and Arm read /proc/cpuinfo; macOS on Apple silicon reads
    sysctl (M2 and later have FEAT_BF16)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    words = set(cpuinfo.split())
    if words & _CPU_BF16_FLAGS:
        return True
    if "bf16" in words and any(line.startswith("Features") for line in cpuinfo.splitlines()):
        return True  # aarch64: "Features : ... bf16 ..."
    if not cpuinfo and platform.system() == "Darwin":
        return _darwin_feature("hw.optional.arm.FEAT_BF16")
    return False


def _darwin_feature(name: str) -> bool:
    import subprocess
    result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip() == "1"


BF16_MIN_BITS = 4  # auto's bf16 only where every linear has at least this many bits


def resolve_calib_dtype(name: str, device: str, trains_blocks: bool = False, min_bits: int = 8) -> torch.dtype:
    """'auto' -> bfloat16 where the device has native bf16 GEMMs, else float32; float32 too where blocks are
    trained (a learned method or --block-epochs: not measured) or any linear gets fewer than 4 bits (measured:
    GPTQ W2 g64 loses 4-5% more on news with bf16 products, docs/calibration.md); the others as named."""
    if name not in CALIB_DTYPES:
        raise EdgeqError(f"--calib-dtype must be one of {', '.join(CALIB_DTYPES)}, got {name!r}")
    if name == "auto":
        if trains_blocks or min_bits < BF16_MIN_BITS:
            return torch.float32
        native = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bf16()
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, name)


def compute_in(dtype: torch.dtype, device: str):
    """The context the calibration forwards run in: autocast's matrix products in `dtype` (its float32 ops,
    softmax and norms among them, stay float32), or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=dtype)

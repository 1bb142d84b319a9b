"""Execution providers by short name: which this onnxruntime build has, and a clear refusal (with how to get
it) for one it lacks. onnxruntime itself would silently fall back to the CPU."""
from __future__ import annotations

from ..errors import EdgeqError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "dml": "DmlExecutionProvider",
}
HOW_TO_GET = {
    "cuda": "pip install onnxruntime-gpu (in place of onnxruntime) on a machine with an NVIDIA GPU and CUDA 12",
    "xnnpack": "an onnxruntime built with --use_xnnpack (the Android package onnxruntime-android has it)",
    "coreml": "onnxruntime on macOS or iOS (the PyPI wheel for macOS has it)",
    "nnapi": "the Android package onnxruntime-android (NNAPI exists only on Android)",
    "qnn": "pip install onnxruntime-qnn on a Snapdragon device (Windows on ARM), or a build with --use_qnn",
    "dml": "pip install onnxruntime-directml on Windows",
}
# auto: the first of these that this build has; accelerators before the CPU
AUTO_ORDER = ("cuda", "qnn", "coreml", "nnapi", "dml", "xnnpack", "cpu")


def available() -> list[str]:
    """Short names of the providers this onnxruntime build offers (known ones only)."""
    import onnxruntime as ort
    present = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in present]


def resolve(name: str) -> str:
    """Short name (or 'auto') -> onnxruntime provider name; refuses what this build lacks."""
    name = name.lower()
    have = available()
    if name == "auto":
        return PROVIDERS[next(short for short in AUTO_ORDER if short in have)]
    if name not in PROVIDERS:
        raise EdgeqError(f"unknown provider {name!r}; choose from auto, {', '.join(PROVIDERS)}")
    if name not in have:
        raise EdgeqError(f"this onnxruntime build has no {name} provider (it has: {', '.join(have)}); "
                         f"to get it: {HOW_TO_GET[name]}")
    return PROVIDERS[name]

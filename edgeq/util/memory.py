"""Keeping the process small: its resident memory (now and at its peak), and handing freed heap memory
back to the OS.

glibc raises its mmap threshold after the first large free, so the many few-MB weight and activation
buffers of a block-by-block pass end up on the heap, and free() keeps them there; malloc_trim returns
them. Without it the streamed pass grew by ~400 MB on SmolLM2 although nothing was alive.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path


def peak_rss_mb() -> float | None:
    """This process's peak resident memory; None where the OS does not say (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if os.uname().sysname == "Darwin" else peak / 2 ** 10  # bytes on macOS, KiB on Linux


def rss_mb() -> float | None:
    """Resident memory of this process now (Linux and Android: /proc; elsewhere unknown)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def release_freed_memory() -> None:
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc (macOS, musl): nothing to do

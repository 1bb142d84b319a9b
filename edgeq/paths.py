"""Checks on where output goes, made before any loading or work (numpy-free and torch-free, so the device
commands can use them): an output folder that may be created, a file that may be written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import EdgeqError


def check_output_folder(out: Path) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgeqError(f"output path {out} is a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        raise EdgeqError(f"output folder {out} exists and is not empty; choose another --out or remove it")
    check_writable_place(out.parent)


def probe_error(folder: Path) -> str | None:
    """Why a folder cannot be created in `folder`, or None. A probe rather than os.access, which says yes to
    root on read-only mounts."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edgeq-probe-", dir=folder))
    except OSError as err:
        return err.strerror
    return None


def check_writable_place(folder: Path) -> None:
    """Refuse a place where the output's temporary folder cannot go (its nearest existing ancestor is
    probed): otherwise a read-only place is found only when the first block is saved."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    error = probe_error(existing)
    if error:
        raise EdgeqError(f"cannot write under {existing}: {error}")


def check_writable_file(path: str, flag: str) -> None:
    """Refuse an output file that cannot be written before the work that fills it, not after."""
    target = Path(path)
    if target.is_dir():
        raise EdgeqError(f"{flag} {path} is a folder, not a file")
    parent = target.parent
    if not parent.is_dir() or probe_error(parent) or (target.exists() and not os.access(target, os.W_OK)):
        raise EdgeqError(f"{flag} {path}: cannot write there ({parent} is missing or not writable)")

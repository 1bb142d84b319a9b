"""Checks on where output goes, made before any loading or work (numpy-free and torch-free, so the device
commands can use them): an output folder that may be created, a file that may be written."""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from ..errors import EdgeqError


def check_output_folder(out: Path | str) -> None:
    if not str(out).strip():
        raise EdgeqError("--out is empty; name the folder to create")
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


def read_utf8(path: Path) -> str:
    """A text file's contents, decoded strictly: a file in another encoding is one line naming the file and the
    first byte that is not UTF-8, never text with replacement characters fed on to a tokenizer."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EdgeqError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); convert "
                         f"it first, e.g. iconv -f latin1 -t utf-8") from None


@contextmanager
def exclusive_output(out: Path):
    """Hold an exclusive lock on `out` for the body: a second run into the same folder is refused at once. The
    lock is the kernel's (flock on .OUT.lock beside it), so a killed run never leaves a lock that blocks the
    next one; the file is removed when the body ends."""
    import fcntl
    lock = out.with_name(f".{out.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise EdgeqError(f"another edgeq run is writing {out}; wait for it to finish or choose another --out") from None
    try:
        yield
    finally:
        with suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def read_json_object(path: Path, what: str = "JSON file") -> dict:
    """A JSON file that must hold an object (reports, configs, records), or one line saying why it cannot be
    read: missing, unreadable, truncated, not UTF-8, or JSON of another shape."""
    import json
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EdgeqError(f"cannot read {what} {path}: {err}") from None
    if not isinstance(data, dict):
        raise EdgeqError(f"{path} is not a {what}: it holds a JSON {type(data).__name__}, not an object")
    return data


@contextmanager
def atomic_folder(destination: Path):
    """Yield a temporary folder next to destination; rename it into place only if the body succeeds."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{destination.name}.tmp-"
    for stale in destination.parent.glob(glob.escape(prefix) + "*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=destination.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the output private to its owner
    try:
        yield tmp
        if destination.exists():
            destination.rmdir()  # only an empty folder may be replaced; the CLI refuses non-empty ones
        os.rename(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""A hard memory limit for one process: a cgroup v1 memory group (root only), as a laptop with that much
RAM and no swap would impose. Exceeding it gets the process OOM-killed, which is the point: a run that
finishes inside the group never needed more.

    with MemoryCap("4G") as cap:
        subprocess.Popen(cmd, preexec_fn=cap.enter)   # the child joins the group before it execs
    cap.max_usage_mb, cap.failcnt                     # read before the group is removed
"""
from __future__ import annotations

import os
from pathlib import Path

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")


def parse_size(text: str) -> int:
    """'4G', '512M', '4096' (bytes) -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def own_memory_group() -> Path:
    """This process's memory cgroup (groups made under it inherit its limits too)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return MEMORY_ROOT / path.lstrip("/")
    raise SystemExit("no cgroup v1 memory controller here: --memory-cap needs one (and root)")


class MemoryCap:
    def __init__(self, size: str):
        self.limit = parse_size(size)
        self.group = own_memory_group() / f"edgeq-cap-{os.getpid()}"
        self.max_usage_mb = self.failcnt = None

    def __enter__(self) -> "MemoryCap":
        try:
            self.group.mkdir()
        except OSError as err:
            raise SystemExit(f"cannot make the memory group {self.group}: {err} (needs root)") from None
        (self.group / "memory.limit_in_bytes").write_text(str(self.limit))
        if (self.group / "memory.memsw.limit_in_bytes").exists():  # swap counts too, where accounted
            (self.group / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
        return self

    def enter(self) -> None:
        """In the child, before exec: join the group."""
        (self.group / "cgroup.procs").write_text(str(os.getpid()))

    def __exit__(self, *exc) -> None:
        self.max_usage_mb = round(int((self.group / "memory.max_usage_in_bytes").read_text()) / 2**20, 1)
        self.failcnt = int((self.group / "memory.failcnt").read_text())
        self.group.rmdir()  # the child has exited, so the group is empty

"""Bench reports: the machine they were taken on, a table, JSON, and PNG plots of latency distributions;
`compare` puts reports from several devices side by side."""
from __future__ import annotations

import os
import platform
import struct
from pathlib import Path

from ..errors import EdgeqError
from ..util.paths import read_json_object

SCHEMA = 1
# ISA features that decide which onnxruntime kernels run (x86 and ARM names as /proc/cpuinfo spells them)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2", "bf16", "fphp")
REQUIRED = ("schema", "machine", "settings", "models")
# Linux arm64 hwcap bits (arch/arm64/include/uapi/asm/hwcap.h) of the ARM features above, as (auxv key, bit):
# AT_HWCAP = 16, AT_HWCAP2 = 26. What the kernel, or qemu-user emulating one, lets a process use.
ARM_HWCAPS = {"asimd": (16, 1), "fphp": (16, 9), "asimddp": (16, 20), "sve": (16, 22), "sve2": (26, 1),
              "i8mm": (26, 13), "bf16": (26, 14)}
ARM_MACHINES = ("aarch64", "arm64")


def cpu_info() -> tuple[str, list[str]]:
    """(CPU model name, ISA flags of interest) from /proc/cpuinfo where it exists, else platform's guess.
    Under qemu-user, /proc/cpuinfo describes the x86 host: an ARM process then says so, with the features
    the emulator grants it (its auxiliary vector), never the host's."""
    machine, fallback = platform.machine(), platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fallback, []
    name, flags = parse_cpuinfo(text, machine, fallback)
    if machine.lower() in ARM_MACHINES and "asimd" not in flags:
        try:
            flags = hwcap_flags(Path("/proc/self/auxv").read_bytes())
        except OSError:
            flags = []
        name = f"{machine} emulated on {name}"
    return name, flags


def hwcap_flags(auxv: bytes) -> list[str]:
    """The ARM features of ISA_FLAGS that a 64-bit auxiliary vector grants (plus neon, as parse_cpuinfo)."""
    entries = dict(struct.iter_unpack("<QQ", auxv[:len(auxv) // 16 * 16]))
    granted = {f for f, (key, bit) in ARM_HWCAPS.items() if entries.get(key, 0) >> bit & 1}
    return [f for f in (*ISA_FLAGS, "neon") if f in granted or (f == "neon" and "asimd" in granted)]


def parse_cpuinfo(text: str, machine: str, fallback_name: str) -> tuple[str, list[str]]:
    """x86 lists `flags` and names the CPU in `model name`; ARM lists `Features` and may name it only in
    `Hardware` or not at all. NEON is ASIMD on aarch64."""
    name, flags = fallback_name, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            name = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    if machine.lower() in ARM_MACHINES and "asimd" in flags:
        flags.add("neon")
    return name, [f for f in (*ISA_FLAGS, "neon") if f in flags]


def machine_info() -> dict:
    import onnxruntime as ort

    from .providers import available
    name, flags = cpu_info()
    return {"cpu": name, "arch": platform.machine(), "cores": os.cpu_count(), "isa": flags,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "onnxruntime": ort.__version__, "providers_available": available()}


def report(results: list[dict], settings: dict, peak_rss_mb: float | None = None) -> dict:
    """peak_rss_mb: the whole process's peak, all models loaded and run."""
    return {"schema": SCHEMA, "machine": machine_info(), "settings": settings, "peak_rss_mb": peak_rss_mb,
            "models": results}


def load_report(path) -> dict:
    data = read_json_object(path, "bench report")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise EdgeqError(f"{path} is not an edgeq bench report (missing {', '.join(missing)})")
    return data


def table(reports: list[tuple[str, dict]]) -> str:
    """One markdown table for (device label, report) pairs; ratios are against each report's first model."""
    head = ("| device | model | decode p50 ms | p90 | p99 | x first | tok/s | prefill p50 ms | e2e tok/s | load s | "
            "load RSS MB | file MB |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for device, rep in reports:
        rows = rep["models"]
        base = rows[0]["decode_ms_per_token"]["p50"] if rows and rows[0]["decode_ms_per_token"] else None
        for r in rows:
            d = r["decode_ms_per_token"]
            ratio = d["p50"] / base if d and base else float("nan")
            e2e = r["e2e_tokens_per_s"]["p50"] if r["e2e_tokens_per_s"] else float("nan")
            lines.append(f"| {device} | {r['name']} | {d['p50']:.2f} | {d['p90']:.2f} | {d['p99']:.2f} | {ratio:.3f} | "
                         f"{r['decode_tokens_per_s']:.1f} | {r['prefill_ms']['p50']:.1f} | {e2e:.1f} | "
                         f"{r['load_s']:.2f} | "
                         f"{'-' if r.get('load_rss_mb') is None else round(r['load_rss_mb'])} | "
                         f"{r['file_mb']:.1f} |")
    return "\n".join(lines)


def plot(reports: list[tuple[str, dict]], path) -> None:
    """Box plots of per-token decode latency, one box per (device, model)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeqError("--plot needs matplotlib: pip install 'edgeq[plot]'") from None
    labels, samples = [], []
    for device, rep in reports:
        run = rep["settings"]
        where = f"\n{device}\n{run['provider']}, {run['threads'] or 'default'} threads" if len(reports) > 1 else ""
        for r in rep["models"]:
            labels.append(r["name"] + where)
            samples.append(r["samples_ms"]["decode"])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4.5))
    ax.boxplot(samples, showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_ylabel("decode latency per token (ms)")
    ax.set_ylim(bottom=0)  # ratios read true only from zero
    run = reports[0][1]["settings"]
    title = f"prompt {run['prompt']}, {run['gen']} generated tokens"
    if len(reports) == 1:
        title += f", {run['runs']} runs, {run['threads'] or 'default'} threads, provider {run['provider']}"
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Exported folders on x86 against the same folders on aarch64 (a Debian arm64 root run through qemu-user):
perplexity on the same windows and greedy tokens, each side running edgeq's runtime install alone (numpy,
onnxruntime, tokenizers), through the same probe.

    sudo bash benchmarks/aarch64/make_root.sh /var/tmp/edgeq-arm64          # once (~10 minutes)
    python benchmarks/aarch64/compare.py fp32=DIR w4-acc0=DIR w8@4=DIR ...  # as root (chroot, bind mounts)
    python benchmarks/aarch64/compare.py --bench w4=DIR                     # edgeq bench inside the root
    python benchmarks/generated_docs.py                                     # the table into docs/device.md

LABEL=DIR names one layout; LABEL@B evaluates the folder sliced to B bits as the device would (an 8-bit
export). Each layout's result is merged into benchmarks/results/aarch64.json the moment both sides are
done. The emulated side's seconds are qemu's speed on this machine, never ARM latency. What must hold
(the ARM issue): perplexity equal within 1e-4 relative at accuracy level 0 and 0.5% at level 4, and the
greedy tokens equal at level 0.

--cpu picks the core qemu emulates (QEMU_CPU, recorded with each result): neoverse-n1 by default, an
Armv8.2 core with the dot product (the Cortex-A76 class of phones and boards; onnxruntime's int8 MatMulNBits
kernels use it), and no SVE, which qemu 7.2 emulates ~20x slower (numpy's 128 x 576 x 1536 matmul: 0.016
GFLOP/s on `max`, 0.30 on neoverse-n1). `--cpu max` adds i8mm, SVE and bf16: run it on a few windows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "aarch64.json"
BENCH_RESULTS = ROOT / "benchmarks" / "results" / "aarch64_bench.json"
EXACT_LIMIT, APPROXIMATE_LIMIT = 1e-4, 5e-3  # relative perplexity difference: level 0 (or no MatMulNBits), level 4
PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"

# Runs on either side: python -c PROBE FOLDER BITS SEQ_LEN WINDOWS TOKENS -> one JSON line.
PROBE = """
import json, platform, sys, time
import onnxruntime
from edgeq.evaluation.heldout import evaluate_texts
from edgeq.runtime.report import cpu_info
from edgeq.runtime.session import OrtDecoder
from edgeq.runtime.tokenizer import load_tokenizer
folder, bits, seq_len, windows, new = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
bits = None if bits == "-" else float(bits) if "." in bits else int(bits)
start = time.perf_counter()
[result] = evaluate_texts(folder, [None], seq_len, windows, progress=False, bits=bits)
tokenizer, _ = load_tokenizer(folder)
prompt = tokenizer.encode(%r, add_special_tokens=False).ids
tokens = OrtDecoder.from_folder(folder, bits=bits).greedy(prompt, new)
print(json.dumps({"perplexity": result["perplexity"], "windows": result["windows"], "tokens": tokens,
                  "arch": platform.machine(), "cpu": cpu_info(), "onnxruntime": onnxruntime.__version__,
                  "seconds": round(time.perf_counter() - start, 1)}))
""" % PROMPT


def parse_layout(text: str) -> tuple[str, Path, str]:
    label, _, folder = text.partition("=")
    if not folder or not (Path(folder) / "model.onnx").is_file():
        raise SystemExit(f"{text!r}: want LABEL=FOLDER, an exported folder with model.onnx")
    bits = label.partition("@")[2] or "-"
    return label, Path(folder).resolve(), bits


class Mounted:
    """The folder bind-mounted read-only inside the root, for the time of one probe."""

    def __init__(self, root: Path, folder: Path, name: str):
        self.source = folder
        self.inside = Path("/mnt/edgeq") / name
        self.target = root / self.inside.relative_to("/")

    def __enter__(self):
        self.target.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.target):  # left by an interrupted run
            subprocess.run(["umount", str(self.target)], check=True)
        subprocess.run(["mount", "--bind", "-o", "ro", str(self.source), str(self.target)], check=True)
        return self.inside

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.target)], check=True)


def held_to(folder: Path) -> tuple[bool, float]:
    """(exact, limit): an export with float linears only or MatMulNBits at accuracy level 0 computes the same
    sums on both sides up to float order, so its perplexity must agree to 1e-4 and its greedy tokens all
    match; at level 4 each side quantizes activations to int8 in its own kernel: 0.5%, tokens not required."""
    info = json.loads((folder / "export.json").read_text())
    exact = info["accuracy_level"] == 0 or info["matmulnbits_nodes"] == 0
    return exact, EXACT_LIMIT if exact else APPROXIMATE_LIMIT


def verdict(record: dict) -> bool:
    return (record["perplexity_relative_difference"] <= record["limit"]
            and (record["tokens_equal"] or not record["exact"]))


def run_probe(command: list[str], env: dict | None = None) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def both_sides(args, label: str, folder: Path, bits: str) -> dict:
    held = held_to(folder)  # before the probes: a folder without export.json fails now, not after emulation
    probe_args = [bits, str(args.seq_len), str(args.windows), str(args.tokens)]
    x86 = run_probe([sys.executable, "-c", PROBE, str(folder), *probe_args])
    with Mounted(args.root, folder, label.replace("@", "_at_")) as inside:
        arm = run_probe(["chroot", str(args.root), "/opt/venv/bin/python", "-c", PROBE, str(inside), *probe_args],
                        emulated_env(args))
    return {"label": label, "folder": str(folder), "bits": bits, "seq_len": args.seq_len, "qemu_cpu": args.cpu,
            **compared(x86, arm, *held), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def compared(x86: dict, arm: dict, exact: bool, limit: float) -> dict:
    """The two probes' results side by side, with how far they agree and the limit they are held to."""
    pairs = list(zip(x86["tokens"], arm["tokens"]))
    return {"x86": x86, "aarch64": arm, "exact": exact, "limit": limit,
            "perplexity_relative_difference": abs(arm["perplexity"] / x86["perplexity"] - 1),
            "tokens_equal": x86["tokens"] == arm["tokens"],
            "tokens_same_prefix": next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))}


def emulated_env(args) -> dict:
    return {**os.environ, "QEMU_CPU": args.cpu}


def merge(path: Path, record: dict) -> None:
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[f"{record['label']} on {record['qemu_cpu']}"] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def table(path: Path) -> str:
    rows = ["| layout on emulated core | windows | x86 ppl | aarch64 ppl | rel. difference (limit) | greedy tokens "
            "equal | verdict | emulated s / x86 s |", "|---|---|---|---|---|---|---|---|"]
    for label, r in sorted(json.loads(path.read_text()).items()):
        equal = "yes" if r["tokens_equal"] else f"first {r['tokens_same_prefix']} of {len(r['x86']['tokens'])}"
        rows.append(f"| {label} | {r['x86']['windows']} x {r['seq_len']} | {r['x86']['perplexity']:.4f} | "
                    f"{r['aarch64']['perplexity']:.4f} | "
                    f"{r['perplexity_relative_difference']:.1e} ({r['limit']:.0e}) | {equal} | "
                    f"{'pass' if verdict(r) else 'FAIL'} | "
                    f"{r['aarch64']['seconds']:.0f} / {r['x86']['seconds']:.0f} |")
    return "\n".join(rows)


def bench(args, label: str, folder: Path) -> None:
    with Mounted(args.root, folder, label) as inside:
        out = Path("/tmp/edgeq-aarch64-bench.json")
        subprocess.run(["chroot", str(args.root), "/opt/venv/bin/edgeq", "bench", str(inside), "--threads", "2",
                        "--runs", "2", "--warmup", "1", "--prompt", "32", "--gen", "8", "--json", str(out)],
                       check=True, env=emulated_env(args))
        (args.root / out.relative_to("/")).replace(BENCH_RESULTS)
    print(f"{BENCH_RESULTS} written (emulation speed, not ARM latency)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layouts", nargs="*", metavar="LABEL=FOLDER")
    parser.add_argument("--root", type=Path, default=Path("/var/tmp/edgeq-arm64"))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens compared")
    parser.add_argument("--cpu", default="neoverse-n1", help="the core qemu emulates (QEMU_CPU): neoverse-n1, "
                        "cortex-a72 (no dot product), max (i8mm, SVE; ~20x slower)")
    parser.add_argument("--bench", metavar="LABEL=FOLDER", help="run edgeq bench on this folder inside the root")
    parser.add_argument("--table", action="store_true", help="print the table of the results file and stop")
    args = parser.parse_args(argv)
    if args.table:
        return print(table(RESULTS))
    if not (args.root / "opt/venv/bin/edgeq").is_file():
        raise SystemExit(f"{args.root}: no edgeq inside; run benchmarks/aarch64/make_root.sh first")
    for text in args.layouts:
        label, folder, bits = parse_layout(text)
        record = both_sides(args, label, folder, bits)
        merge(RESULTS, record)
        print(f"{label}: x86 {record['x86']['perplexity']:.4f}, aarch64 {record['aarch64']['perplexity']:.4f} "
              f"({record['perplexity_relative_difference']:.1e}), tokens equal {record['tokens_equal']}, "
              f"{'pass' if verdict(record) else 'FAIL'}, "
              f"{record['aarch64']['seconds']:.0f} s emulated", flush=True)
    if args.bench:
        label, folder, _ = parse_layout(args.bench)
        bench(args, label, folder)


if __name__ == "__main__":
    main()

"""Exported folders compared in one process: sizes, and decode latency of one token on a 128-token KV
cache, with the models interleaved in blocks (A×20 B×20 C×20 A×20 ...) so that drift on a noisy machine
hits every model alike, and only the settled end of each block counted. On this 2-core VM a session
that has been idle runs its first ~8 tokens up to 2x slower (fp32 24 -> 12.7 ms, W4 8.4 -> 5.4 ms,
measured per position in the block); single-run interleaving measured that warm-up, not the model, and
a deployed app decoding with one session does not see it.

    python benchmarks/export_latency.py FP32_DIR Q_DIR... [--threads 2] [--runs 50] [--cache 128]

The first folder is the baseline of the ratios.
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx

from edgeq.runtime.session import MODEL_FILE, OrtDecoder, cpu_session


def linear_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of the weight initializers of linears, their fp32 bytes): MatMulNBits B/scales/zero points,
    or float MatMul weights; the embedding (Gather) and a tied head are not linears here."""
    graph = onnx.load(str(folder / MODEL_FILE), load_external_data=False).graph
    sizes = {init.name: len(init.raw_data) for init in graph.initializer}
    dims = {init.name: list(init.dims) for init in graph.initializer}
    stored = fp32 = 0
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            stored += sum(sizes.get(name, 0) for name in node.input[1:])
            fp32 += 4 * attrs["K"] * attrs["N"]
        elif node.op_type == "MatMul" and node.input[1] in sizes and len(dims[node.input[1]]) == 2:
            stored += sizes[node.input[1]]
            fp32 += sizes[node.input[1]]
    return stored, fp32


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".onnx", ".data"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block", type=int, default=20, help="consecutive runs of one model")
    parser.add_argument("--settle", type=int, default=10, help="runs at the start of a block not counted")
    parser.add_argument("--cache", type=int, default=128, help="KV cache length before the timed token")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    decoders, pasts = [], []
    for folder in args.folders:
        decoder = OrtDecoder(cpu_session(folder / MODEL_FILE, args.threads))
        _, past = decoder.forward(rng.integers(0, 1000, (1, args.cache)), decoder.empty_past())
        decoders.append(decoder)
        pasts.append(past)
    token = np.array([[42]])
    for decoder, past in zip(decoders, pasts):
        for _ in range(args.warmup):
            decoder.forward(token, past)
    times = [[] for _ in decoders]
    while len(times[-1]) < args.runs:
        for i, (decoder, past) in enumerate(zip(decoders, pasts)):
            for run in range(args.block):
                t = time.perf_counter()
                decoder.forward(token, past)  # the cache stays at --cache tokens: every run measures the same step
                if run >= args.settle:
                    times[i].append(time.perf_counter() - t)

    base_p50 = statistics.median(times[0])
    base_size = folder_bytes(args.folders[0])
    print(f"decode 1 token on a {args.cache}-token KV cache, {args.threads} threads, {len(times[0])} runs each, "
          f"interleaved in blocks of {args.block} (first {args.settle} of each not counted)")
    print(f"| {'model':<28} | {'p50 ms':>7} | {'p90 ms':>7} | {'x first':>7} | {'tok/s':>6} | {'ONNX MB':>8} | "
          f"{'x first':>7} | {'linears MB':>10} | {'x fp32':>6} |")
    for folder, t in zip(args.folders, times):
        p50, p90 = statistics.median(t), float(np.percentile(t, 90))
        stored, fp32 = linear_bytes(folder)
        size = folder_bytes(folder)
        print(f"| {folder.name:<28} | {p50 * 1e3:7.2f} | {p90 * 1e3:7.2f} | {p50 / base_p50:7.3f} | {1 / p50:6.1f} | "
              f"{size / 2 ** 20:8.1f} | {size / base_size:7.3f} | {stored / 2 ** 20:10.1f} | "
              f"{stored / fp32 if fp32 else float('nan'):6.3f} |")


if __name__ == "__main__":
    main()

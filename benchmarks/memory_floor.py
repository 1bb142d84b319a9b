"""How far decode is from the memory floor: the bytes one decode step must read (weights, one embedding
row, the KV cache at the bench's mean position) over the memory bandwidth measured here by a STREAM-like
copy in numpy, against the ms/token an `edgeq bench` JSON measured.

    edgeq bench fp32-onnx w4-onnx --threads 2 --json bench.json
    python benchmarks/memory_floor.py fp32-onnx w4-onnx --bench bench.json [--threads 2]

Decode of a small model is memory-bound when the floor is close to the measurement; the ratio is the room
left for kernels. numpy + onnx only. The copy counts bytes read plus bytes written (STREAM's convention).
"""
import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import onnx

ONE_ROW = {"Gather": 0, "GatherBlockQuantized": 0}  # tables a step reads one row of (by input index)
POSITION_TABLES = ("cos_cache", "sin_cache")


def copy_bandwidth(threads: int, mb: int = 512, repeats: int = 5) -> float:
    """Best GB/s of copying an `mb` MB float64 array into another, split across `threads` threads
    (numpy releases the GIL while copying)."""
    src = np.ones(mb * 2 ** 20 // 8)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.copyto, args=(dst[p[0]:p[-1] + 1], src[p[0]:p[-1] + 1]))
                   for p in parts]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def step_bytes(folder: Path, position: int) -> dict:
    """Bytes a decode step reads at this KV-cache position: every weight initializer in full, except tables
    read one row at a time (a float embedding gathered by Gather, the rotary caches)."""
    proto = onnx.load(str(folder / "model.onnx"))
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer}
    rows = {t.name: t.dims[0] for t in proto.graph.initializer if t.dims}
    one_row = {n.input[ONE_ROW[n.op_type]] for n in proto.graph.node if n.op_type in ONE_ROW} | \
        {name for name in sizes if name.startswith(POSITION_TABLES)}  # a pair per layer kind (Gemma 3)
    # a table another node also reads (a tied head: FusedMatMul over the float table, MatMulNBits over codes
    # the lookup shares) is read whole
    shared = {name for n in proto.graph.node if n.op_type not in ONE_ROW for name in n.input}
    weights = sum(size if name not in one_row or name in shared else size // max(rows[name], 1)
                  for name, size in sizes.items())
    config = json.loads((folder / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 4 * position
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--bench", type=Path, required=True, help="an edgeq bench --json report of these folders")
    parser.add_argument("--threads", type=int, help="copy threads (default: the bench's)")
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args()
    report = json.loads(args.bench.read_text())
    settings = report["settings"]
    threads = args.threads or settings["threads"] or 1
    bandwidth = copy_bandwidth(threads)
    position = settings["prompt"] + settings["gen"] // 2
    measured = {m["name"]: m["decode_ms_per_token"]["p50"] for m in report["models"]}
    rows = []
    print(f"copy bandwidth {bandwidth:.1f} GB/s ({threads} threads); KV cache at position {position}")
    print("| folder | MB read per token (weights + KV) | floor ms/token | measured ms/token | measured / floor |")
    print("|---|---|---|---|---|")
    for folder in args.folders:
        b = step_bytes(folder, position)
        floor_ms = b["total"] / bandwidth / 1e6
        got = measured.get(folder.name)
        rows.append({"folder": folder.name, **b, "floor_ms": floor_ms, "measured_ms": got})
        print(f"| {folder.name} | {b['total'] / 2 ** 20:.1f} ({b['weights'] / 2 ** 20:.1f} + {b['kv_cache'] / 2 ** 20:.1f})"
              f" | {floor_ms:.2f} | {got if got is None else f'{got:.2f}'} | "
              f"{'-' if got is None else f'{got / floor_ms:.2f}'} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"bandwidth_gb_s": bandwidth, "threads": threads, "position": position,
                                             "machine": report.get("machine"), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

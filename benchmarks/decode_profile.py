"""Where one decode step's time goes, node by node: onnxruntime's own profiler over the last --steps decode
steps after a --prompt-token prompt, aggregated per operator type and per node, beside the bytes each node's
weights hold and the time reading them takes at the copy bandwidth measured here (memory_floor.py).

    python benchmarks/decode_profile.py w4-onnx [fp32-onnx ...] [--threads 2] [--json out.json]

The profiled session is the one `edgeq bench` opens (all optimisations, the same thread count), so node
names are the optimised graph's; a node the optimiser created or renamed has no known weight bytes.
"""
import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from memory_floor import ONE_ROW, POSITION_TABLES, copy_bandwidth


def node_weight_bytes(folder: Path) -> dict[str, int]:
    """Bytes of the initializers each node of the exported graph reads in one decode step (a lookup reads one
    row of its table; a tied table is counted for each reader)."""
    proto = onnx.load(str(folder / "model.onnx"))
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer}
    rows = {t.name: max(t.dims[0], 1) if t.dims else 1 for t in proto.graph.initializer}
    # a lookup's table and the rotary caches (GroupQueryAttention reads the rows of the new positions)
    per_row = lambda n, i, name: (n.op_type in ONE_ROW and i == ONE_ROW[n.op_type]) or \
        name.startswith(POSITION_TABLES)  # noqa: E731
    return {n.name: sum(sizes.get(name, 0) // (rows[name] if per_row(n, i, name) else 1)
                        for i, name in enumerate(n.input) if name in sizes) for n in proto.graph.node}


def profile_trace(folder: Path, threads: int, prompt: int, steps: int) -> list[dict]:
    """The profiler's events of one session: a prompt, then `steps` greedy decode steps."""
    import onnxruntime as ort

    from edgeq.runtime.session import OrtDecoder
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    decoder = OrtDecoder(session, folder)
    ids = np.random.default_rng(0).integers(100, 1000, (1, prompt))
    logits, past = decoder.forward(ids, decoder.empty_past())
    for _ in range(steps):
        logits, past = decoder.forward(logits[:, -1:].argmax(-1), past)
    return json.loads(Path(session.end_profiling()).read_text())


def decode_node_times(trace: list[dict], steps: int) -> dict[str, tuple[str, float]]:
    """{node: (op type, mean ms per step)} over the last `steps` runs, the first half dropped as warmup."""
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    kept = runs[-(steps // 2):]
    totals, ops = defaultdict(float), {}
    for e in trace:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in kept):
            name = e["name"].removesuffix("_kernel_time")
            totals[name] += e["dur"] / 1e3
            ops[name] = e["args"].get("op_name", "?")
    return {name: (ops[name], ms / len(kept)) for name, ms in totals.items()}, \
        sum(r["dur"] for r in kept) / 1e3 / len(kept)


def summarize(folder: Path, threads: int, prompt: int, steps: int, bandwidth: float) -> dict:
    times, step_ms = decode_node_times(profile_trace(folder, threads, prompt, steps), steps)
    weights = node_weight_bytes(folder)
    by_op = defaultdict(lambda: {"ms": 0.0, "nodes": 0, "bytes": 0})
    for name, (op, ms) in times.items():
        by_op[op]["ms"] += ms
        by_op[op]["nodes"] += 1
        by_op[op]["bytes"] += weights.get(name, 0)
    for row in by_op.values():
        row["floor_ms"] = row["bytes"] / bandwidth / 1e6
    slowest = sorted(times.items(), key=lambda kv: -kv[1][1])[:12]
    return {"folder": folder.name, "step_ms": step_ms, "nodes_ms": sum(ms for _, ms in times.values()),
            "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]["ms"])),
            "slowest_nodes": [{"node": n, "op": op, "ms": ms, "bytes": weights.get(n)} for n, (op, ms) in slowest]}


def print_summary(s: dict) -> None:
    print(f"\n{s['folder']}: {s['step_ms']:.2f} ms per decode step (run), {s['nodes_ms']:.2f} ms in nodes")
    print("| op | nodes | ms/step | share | weight MB | floor ms at the copy bandwidth |")
    print("|---|---|---|---|---|---|")
    for op, r in s["by_op"].items():
        print(f"| {op} | {r['nodes']} | {r['ms']:.3f} | {r['ms'] / s['step_ms']:.1%} | {r['bytes'] / 2 ** 20:.1f} "
              f"| {r['floor_ms']:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args()
    bandwidth = copy_bandwidth(args.threads)
    print(f"copy bandwidth {bandwidth:.1f} GB/s ({args.threads} threads)")
    out = [summarize(f, args.threads, args.prompt, args.steps, bandwidth) for f in args.folders]
    for s in out:
        print_summary(s)
    if args.json_out:
        args.json_out.write_text(json.dumps({"bandwidth_gb_s": bandwidth, "threads": args.threads,
                                             "prompt": args.prompt, "steps": args.steps, "profiles": out},
                                            indent=1) + "\n")


if __name__ == "__main__":
    main()

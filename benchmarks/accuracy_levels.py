"""One MatMulNBits node, one decode step (M = 1), at accuracy level 0 (fp32 compute) and 4 (int8
activations): what a per-node level would cost before anyone builds one. The shapes are SmolLM2-135M's
(the tied head 49152 x 576, a q projection, a down projection) at 8 and 4 bits, block 128.

    python benchmarks/accuracy_levels.py [--threads 2] [--runs 200]   # -> benchmarks/results/accuracy_levels.json
"""
import argparse
import json
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from harness import git_commit, machine
from quality import ROOT

SHAPES = [("head", 49152, 576), ("q_proj", 576, 576), ("down_proj", 576, 1536)]  # (name, N, K)


def node_session(n: int, k: int, bits: int, block: int, level: int, threads: int) -> ort.InferenceSession:
    """A graph of one MatMulNBits with random codes (speed does not depend on their values)."""
    blocks = -(-k // block)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(n, blocks, block * bits // 8), dtype=np.uint8)
    scales = (rng.random(n * blocks, dtype=np.float32) * 0.01).astype(np.float32)
    zeros = np.full(n * -(-blocks * bits // 8), 0x88 if bits == 4 else 0x80, dtype=np.uint8)
    node = helper.make_node("MatMulNBits", ["x", "B", "S", "Z"], ["y"], domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=block, accuracy_level=level)
    graph = helper.make_graph(
        [node], "one_node", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        initializer=[onnx.numpy_helper.from_array(a, name) for a, name in ((codes, "B"), (scales, "S"), (zeros, "Z"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ms_per_call(session, k: int, runs: int) -> float:
    x = {"x": np.random.default_rng(1).standard_normal((1, k), dtype=np.float32)}
    for _ in range(10):
        session.run(None, x)
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, x)
    return (time.perf_counter() - started) / runs * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_levels.json"))
    args = parser.parse_args()
    rows = []
    for name, n, k in SHAPES:
        for bits in (8, 4):
            ms = {level: ms_per_call(node_session(n, k, bits, 128, level, args.threads), k, args.runs)
                  for level in (0, 4)}
            rows.append({"node": name, "N": n, "K": k, "bits": bits, "block": 128,
                         "ms_level_0": round(ms[0], 4), "ms_level_4": round(ms[4], 4),
                         "level_0_over_4": round(ms[0] / ms[4], 2)})
            print(f"{name:9s} {n}x{k} {bits}-bit: level 0 {ms[0]:.3f} ms, level 4 {ms[4]:.3f} ms "
                  f"({ms[0] / ms[4]:.1f}x)", flush=True)
    report = {"commit": git_commit(), "machine": machine(), "threads": args.threads, "runs": args.runs,
              "onnxruntime": ort.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

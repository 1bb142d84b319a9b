"""What an act-order GPTQ linear (desc_act: a g_idx that scatters each group over the columns) costs in
onnxruntime, measured before choosing how edgeq would import one. Three graphs of the same weights:

- natural: the groups contiguous (no g_idx), onnxruntime's fast MatMulNBits path: the floor;
- g_idx:   MatMulNBits with its optional g_idx input (codes in the source's column order, each column's group
           read from g_idx), zero points as float32 [N, groups]: onnxruntime de-quantizes the whole matrix on
           every call and runs an fp32 GEMM (its "unpacked" path). With packed uint8 zero points (the form
           every other MatMulNBits takes) that path gives wrong products in onnxruntime 1.32, even for a g_idx
           in natural order: recorded as g_idx_packed_zero_points_rel_error;
- gather:  the columns sorted by group (a stable sort of g_idx makes every group contiguous), so the weights
           are a plain MatMulNBits, and the activations permuted to match by one Gather before it.

Each is checked against a numpy de-quantization of the same codes (max |error| over max |y|) and timed at a
decode step (M = 1) and a prefill (M = 128), at SmolLM2-135M's and Qwen2.5-1.5B's MLP shapes, 4 bits, g128.

    python benchmarks/act_order.py [--threads 2] [--runs 200]   # -> benchmarks/results/act_order.json
"""
import argparse
import json
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgeq.quant.pack import pack_blocks, pack_codes
from harness import RESULTS_DIR, git_commit, machine

# (linear, N, K): K a multiple of the group, as GPTQ's act-order g_idx needs (SmolLM2's K = 576 is not of 128)
SHAPES = [("smollm2 down_proj", 576, 1536), ("qwen2.5-1.5b gate_proj", 8960, 1536),
          ("qwen2.5-1.5b down_proj", 1536, 8960)]
BITS, GROUP = 4, 128


def act_order_weights(n: int, k: int, seed: int = 0) -> dict:
    """Codes [N, K], per-group scales and zero points, and a desc_act g_idx: a random column order whose
    consecutive runs of GROUP columns share a group (GPTQ's g_idx[perm[i]] = i // group)."""
    rng = np.random.default_rng(seed)
    groups = k // GROUP
    perm = rng.permutation(k)
    g_idx = np.empty(k, dtype=np.int32)
    g_idx[perm] = np.arange(k) // GROUP
    return {"codes": rng.integers(0, 2 ** BITS, size=(n, k), dtype=np.uint8),
            "scales": (rng.random((n, groups), dtype=np.float32) * 0.02 + 0.001).astype(np.float32),
            "zeros": rng.integers(0, 2 ** BITS, size=(n, groups), dtype=np.uint8), "g_idx": g_idx}


def dequantized(w: dict) -> np.ndarray:
    g = w["g_idx"].astype(np.int64)
    return (w["codes"].astype(np.float32) - w["zeros"][:, g]) * w["scales"][:, g]  # [N, K]


def pack_zero_points(zeros: np.ndarray) -> np.ndarray:
    """[N, groups] 4-bit zero points -> MatMulNBits' packed row-padded bytes (each row starts on a byte)."""
    return pack_codes(zeros, BITS).reshape(-1)


def session(n: int, k: int, m: int, w: dict, variant: str, threads: int) -> ort.InferenceSession:
    codes, inputs, extra, nodes = w["codes"], ["x", "B", "S", "Z"], [], []
    zero_points = w["zeros"].astype(np.float32).reshape(-1) if variant == "g_idx" else pack_zero_points(w["zeros"])
    if variant == "gather":  # columns sorted by group; the activations follow through one Gather
        order = np.argsort(w["g_idx"], kind="stable").astype(np.int64)
        codes = codes[:, order]
        extra.append(onnx.numpy_helper.from_array(order, "order"))
        nodes.append(helper.make_node("Gather", ["x", "order"], ["x_sorted"], axis=1))
        inputs[0] = "x_sorted"
    if variant in ("g_idx", "g_idx_packed_zero_points"):
        inputs.append("g_idx")
        extra.append(onnx.numpy_helper.from_array(w["g_idx"], "g_idx"))
    nodes.append(helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=BITS,
                                  block_size=GROUP, accuracy_level=4))
    arrays = ((pack_blocks(codes, BITS, GROUP), "B"), (w["scales"].reshape(-1), "S"), (zero_points, "Z"))
    graph = helper.make_graph(
        nodes, variant, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        initializer=[onnx.numpy_helper.from_array(a, name) for a, name in arrays] + extra)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ms_per_call(sess, x: np.ndarray, runs: int) -> float:
    for _ in range(5):
        sess.run(None, {"x": x})
    best = float("inf")
    for _ in range(5):  # the best of 5 rounds: a busy machine slows rounds, never speeds them
        started = time.perf_counter()
        for _ in range(runs):
            sess.run(None, {"x": x})
        best = min(best, (time.perf_counter() - started) / runs * 1e3)
    return best


def measure(name: str, n: int, k: int, m: int, threads: int, runs: int) -> dict:
    w = act_order_weights(n, k)
    x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
    reference = x @ dequantized(w).T
    row = {"linear": name, "N": n, "K": k, "M": m, "bits": BITS, "group": GROUP}
    for variant in ("natural", "g_idx", "gather"):
        if variant == "natural":  # the same codes with groups in column order: a different matrix, the floor
            w_variant = {**w, "g_idx": (np.arange(k) // GROUP).astype(np.int32)}
            sess, want = session(n, k, m, w_variant, "natural", threads), x @ dequantized(w_variant).T
        else:
            sess, want = session(n, k, m, w, variant, threads), reference
        got = sess.run(None, {"x": x})[0]
        row[f"{variant}_rel_error"] = float(np.abs(got - want).max() / np.abs(want).max())
        row[f"{variant}_ms"] = round(ms_per_call(sess, x, max(runs // m, 5)), 4)
    packed = session(n, k, m, w, "g_idx_packed_zero_points", threads).run(None, {"x": x})[0]
    row["g_idx_packed_zero_points_rel_error"] = float(np.abs(packed - reference).max() / np.abs(reference).max())
    row["g_idx_over_natural"] = round(row["g_idx_ms"] / row["natural_ms"], 2)
    row["gather_over_natural"] = round(row["gather_ms"] / row["natural_ms"], 2)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS_DIR / "act_order.json"))
    args = parser.parse_args()
    rows = []
    for name, n, k in SHAPES:
        for m in (1, 128):
            row = measure(name, n, k, m, args.threads, args.runs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"commit": git_commit(), "machine": machine(), "threads": args.threads, "onnxruntime": ort.__version__,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

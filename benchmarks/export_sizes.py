"""Sizes of exported folders against the first (the fp32 export): the ONNX file, and the quantized linears
alone against their fp32 bytes (MatMulNBits B + scales + zero points).

    python benchmarks/export_sizes.py FP32_DIR Q_DIR...

Latency is `edgeq bench FP32_DIR Q_DIR... --threads 2`: its runs (prefill, then decoded tokens on a
growing cache) alternate between models and matched each model run alone (fp32 9.4-10.6 ms, W4 5.4-5.6
ms per token here). This script used to time single tokens alternating between models every token, and
that slowed the fp32 model by a third (13.5-14.4 ms) for reasons not found, flattering every ratio.
"""
import argparse
from pathlib import Path

import onnx

from edgeq.runtime.session import MODEL_FILE


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
    args = parser.parse_args()
    base_size = folder_bytes(args.folders[0])
    print(f"| {'model':<28} | {'ONNX MB':>8} | {'x first':>7} | {'linears MB':>10} | {'x fp32':>6} |")
    for folder in args.folders:
        stored, fp32 = linear_bytes(folder)
        size = folder_bytes(folder)
        print(f"| {folder.name:<28} | {size / 2 ** 20:8.1f} | {size / base_size:7.3f} | {stored / 2 ** 20:10.1f} | "
              f"{stored / fp32 if fp32 else float('nan'):6.3f} |")


if __name__ == "__main__":
    main()

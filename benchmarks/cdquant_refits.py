"""CDQuant's scale refits against plain CDQuant and decoupleQ, on the real Hessians of one block of the bundled
model: the layer objective (undamped H) of each as a ratio to GPTQ's, per linear and spec.

    python benchmarks/cdquant_refits.py [--block 2] [--samples 32] [--seq-len 512]
Writes benchmarks/results/cdquant_refits.json.
"""
import json
import time
from pathlib import Path

from cdquant_block import SPECS
from decoupleq_objective import block_arguments, block_hessians
from edgeq.solvers import get_solver, weighted_error

RESULTS = Path(__file__).resolve().parent / "results" / "cdquant_refits.json"
VARIANTS = {"cdquant": ("cdquant", {}), "cdquant --refits 1": ("cdquant", {"refits": 1}),
            "cdquant --refits 3": ("cdquant", {"refits": 3}), "decoupleq": ("decoupleq", {})}


def main():
    args = block_arguments(__doc__)
    rows = []
    print("| linear | spec | gptq | " + " | ".join(f"{v} / gptq (s)" for v in VARIANTS) + " |")
    for name, W, H in block_hessians(args.block, args.samples, args.seq_len):
        for spec in SPECS:
            row = {"linear": name, "spec": f"W{spec.bits} g{spec.group_size}",
                   "gptq": weighted_error(W, get_solver("gptq")(W, H, spec).dequantize(), H)}
            for label, (method, opts) in VARIANTS.items():
                t = time.perf_counter()
                qw = get_solver(method)(W, H, spec, **opts)
                row[label] = {"objective": weighted_error(W, qw.dequantize(), H), "seconds": time.perf_counter() - t}
            rows.append(row)
            print(f"| {name} | {row['spec']} | {row['gptq']:.4g} | " + " | ".join(
                f"{row[v]['objective'] / row['gptq']:.3f} ({row[v]['seconds']:.1f})" for v in VARIANTS) + " |",
                flush=True)
            RESULTS.write_text(json.dumps({"block": args.block, "samples": args.samples, "seq_len": args.seq_len,
                                           "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""CDQuant against its GPTQ start on the real Hessians of one block of the bundled model: the layer objective
(undamped H, as quantization.json's layer errors) after GPTQ and after greedy coordinate descent with several
move budgets, and the Numba kernel against its torch twin on the CPU (time ratio, same moves, one run).

    python benchmarks/cdquant_block.py [--block 2] [--samples 32] [--seq-len 512]
Writes benchmarks/results/cdquant_block.json.
"""
import json
import time
from pathlib import Path

import torch

from decoupleq_objective import block_arguments, block_hessians
from edgeq.quant import grid
from edgeq.solvers import get_solver, weighted_error
from edgeq.solvers.cdquant import descend

RESULTS = Path(__file__).resolve().parent / "results" / "cdquant_block.json"
SPECS = [grid.QuantSpec(4, 128), grid.QuantSpec(3, 128), grid.QuantSpec(2, 64)]
PASSES = (0.25, 0.5, 1.0, 2.0)


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def main():
    args = block_arguments(__doc__)
    layers = block_hessians(args.block, args.samples, args.seq_len)
    rows = []
    print("| linear | spec | gptq | " + " | ".join(f"cd {p:g}K" for p in PASSES) + " | moves/K at 1K | "
          "gptq s | cd 1K s numba | cd 1K s torch | torch / numba |")
    for name, W, H in layers:
        for spec in SPECS:
            start, t_gptq = timed(lambda: get_solver("gptq")(W, H, spec))
            row = {"linear": name, "spec": f"W{spec.bits} g{spec.group_size}", "shape": list(W.shape),
                   "gptq": weighted_error(W, start.dequantize(), H), "seconds_gptq": t_gptq}
            descend(W, H, start, 0.01, "numba")  # compile / load the cached kernel outside the timing
            for passes in PASSES:
                (qw, moves), t = timed(lambda: descend(W, H, start, passes, "numba"))
                row[f"cd_{passes:g}"] = weighted_error(W, qw.dequantize(), H)
                row[f"seconds_numba_{passes:g}"] = t
                if passes == 1.0:
                    row["moves_per_k"] = float(moves.double().mean()) / W.shape[1]
                    (qw_t, moves_t), t_torch = timed(lambda: descend(W, H, start, passes, "torch"))
                    row["seconds_torch_1"] = t_torch
                    row["torch_same_codes"] = bool(torch.equal(qw_t.q, qw.q))
            rows.append(row)
            print(f"| {name} | {row['spec']} | {row['gptq']:.4g} | "
                  + " | ".join(f"{row[f'cd_{p:g}']:.4g} ({row[f'cd_{p:g}'] / row['gptq']:.3f})" for p in PASSES)
                  + f" | {row['moves_per_k']:.3f} | {t_gptq:.2f} | {row['seconds_numba_1']:.2f} | "
                  f"{row['seconds_torch_1']:.2f} | {row['seconds_torch_1'] / row['seconds_numba_1']:.1f}"
                  f"{'' if row['torch_same_codes'] else ' (codes differ)'} |", flush=True)
            RESULTS.write_text(json.dumps({"block": args.block, "samples": args.samples, "seq_len": args.seq_len,
                                           "threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

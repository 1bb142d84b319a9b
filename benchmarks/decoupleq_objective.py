"""decoupleQ's layer objective across outer iterations, on the real Hessians of one block of the bundled
model, next to GPTQ's and RTN's (all on the same H).

    python benchmarks/decoupleq_objective.py [--block 2] [--samples 32] [--seq-len 512]

The trace is the damped objective decoupleQ minimises (H + 1% mean diag), after the start (the better
of RTN and GPTQ per row) and after each outer iteration; it must never rise. The other columns use the
undamped H, as `quantization.json`'s layer errors do. "float z" is what the integer zero point costs:
decoupleQ's final codes with the best free float offset per group (w_hat = s q + t, the 2G x 2G normal
equations) instead of t = -s * zero with zero an integer; the integer solution is one of those, so
float z <= decoupleq, and the gap is the price of onnxruntime's fast path at these codes.
"""
import argparse

import torch

from edgeq.quant import grid
from edgeq.evaluation import heldout
from edgeq.io import models
from edgeq.calib import data
from edgeq.calib.capture import block_output, capture_block_inputs, hessian_hooks
from edgeq.io.models import get_module
from edgeq.solvers import get_solver, weighted_error
from edgeq.solvers.decoupleq import solve_scale_and_offset

SPECS = [grid.QuantSpec(2, 64), grid.QuantSpec(3, 128), grid.QuantSpec(4, 128), grid.QuantSpec(2, -1)]


def hessians_of_blocks(wanted, samples, seq_len):
    """(block, linear name, W, H) for the wanted blocks, every block's inputs propagated in float."""
    source = models.bundled_source()
    model, config = models.load_model(source)
    arch = models.arch_of(config)
    text, _ = heldout.read_text("builtin:novel")
    windows = data.calibration_windows(data.tokenize(models.load_tokenizer(source), text), samples, seq_len)
    hidden, kwargs = capture_block_inputs(model, arch, windows, samples)
    blocks = get_module(model, arch.blocks)
    with torch.no_grad():
        for i in range(max(wanted) + 1):
            accumulators, remove = hessian_hooks(blocks[i], arch, "cpu") if i in wanted else ({}, lambda: None)
            hidden = block_output(blocks[i], hidden, kwargs[0][models.layer_kinds(config)[i]])
            remove()
            for group in arch.input_groups if i in wanted else ():
                for name in group:
                    yield i, name, get_module(blocks[i], name).weight.data, accumulators[group[0]].hessian()


def block_hessians(block_index, samples, seq_len):
    return [(name, W, H) for _, name, W, H in hessians_of_blocks({block_index}, samples, seq_len)]


def block_arguments(doc: str):
    """The arguments every one-block benchmark takes: which block, and its calibration windows."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    return parser.parse_args()


def free_offset_error(W, H, qw) -> float:
    """Undamped objective of qw's codes with the best float scale and offset per group."""
    gs = qw.group_size
    q = qw.q.float()
    scale, offset = solve_scale_and_offset(W, q, H.float(), gs)
    k = W.shape[1]
    w_hat = grid.expand_groups(scale, gs, k) * q + grid.expand_groups(offset, gs, k)
    return weighted_error(W, w_hat, H)


def main():
    args = block_arguments(__doc__)
    print(f"block {args.block}, {args.samples} x {args.seq_len} calibration tokens")
    print(f"| {'linear':<16} | {'spec':<8} | decoupleQ trace (damped objective) | {'rtn':>9} | {'gptq':>9} | "
          f"{'decoupleq':>9} | {'float z':>9} |")
    for name, W, H in block_hessians(args.block, args.samples, args.seq_len):
        for spec in SPECS:
            trace = []
            dq = get_solver("decoupleq")(W, H, spec, trace=trace)
            errors = [weighted_error(W, get_solver(m)(W, H, spec).dequantize(), H) for m in ("rtn", "gptq")]
            errors += [weighted_error(W, dq.dequantize(), H), free_offset_error(W, H, dq)]
            assert all(b <= a for a, b in zip(trace, trace[1:])), f"objective rose: {trace}"
            label = f"W{spec.bits} g{spec.group_size if spec.group_size > 0 else 'ch'}"
            print(f"| {name:<16} | {label:<8} | {' > '.join(f'{t:.4g}' for t in trace):<34} | "
                  + " | ".join(f"{e:>9.4g}" for e in errors) + " |", flush=True)


if __name__ == "__main__":
    main()

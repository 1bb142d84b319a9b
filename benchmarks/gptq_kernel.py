"""Numba vs torch GPTQ on the layer shapes of SmolLM2-135M, interleaved in one run (ratios, not absolutes).

    python benchmarks/gptq_kernel.py [--repeats 7]

Times the whole GPTQ solve (same Hessian, same settings) with the column sweep on each backend, and the
sweep alone on one 128-column block. Both produce the same codes (checked here too).
"""
import argparse
import statistics
import time

import torch

from edgeq.quant import grid
from edgeq.kernels import gptq_block
from edgeq.solvers.gptq import inverse_hessian_factor, solve

SHAPES = [(576, 576), (1536, 576), (576, 1536)]  # (N out, K in): q/o, gate/up, down


def hessian(k, tokens=4096, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, k, generator=gen) @ torch.randn(k, k, generator=gen) * 0.1 + torch.randn(k, generator=gen)
    return X.T @ X / tokens


def timed(fn, repeats):
    out = {}
    for _ in range(repeats):
        for name, f in fn.items():  # interleaved: A B A B ...
            t = time.perf_counter()
            f()
            out.setdefault(name, []).append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in out.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    spec = grid.QuantSpec(4, 128)
    print(f"torch threads {torch.get_num_threads()}; medians of {args.repeats} interleaved runs")
    print(f"{'layer (N x K)':>14} | {'solve numba':>11} | {'solve torch':>11} | ratio | {'sweep numba':>11} | "
          f"{'sweep torch':>11} | ratio | same codes")
    for n, k in SHAPES:
        H = hessian(k)
        W = torch.randn(n, k, generator=torch.Generator().manual_seed(1)) * 0.02
        solve(W, H, spec, backend="numba")  # compile / load the cached kernel outside the timing
        whole = timed({b: (lambda b=b: solve(W, H, spec, backend=b)) for b in ("numba", "torch")}, args.repeats)
        same = torch.equal(solve(W, H, spec, backend="numba").q, solve(W, H, spec, backend="torch").q)
        Hinv = inverse_hessian_factor(H, 0.01).float()[:128, :128].contiguous()
        scale, zero = (t.repeat_interleave(128, 1)[:, :128].contiguous() for t in grid.fit_params(W[:, :128], spec))
        sweep = timed({b: (lambda b=b: gptq_block(W[:, :128].clone(), Hinv, scale, zero, spec.maxq, b))
                       for b in ("numba", "torch")}, args.repeats)
        print(f"{n:>6} x {k:<6} | {whole['numba'] * 1e3:9.1f}ms | {whole['torch'] * 1e3:9.1f}ms | "
              f"{whole['numba'] / whole['torch']:.2f}  | {sweep['numba'] * 1e3:9.2f}ms | {sweep['torch'] * 1e3:9.2f}ms | "
              f"{sweep['numba'] / sweep['torch']:.2f}  | {same}")


if __name__ == "__main__":
    main()

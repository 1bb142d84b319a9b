"""Where MatQuant's slices lose: per linear of every block of the bundled model, the layer objective of each
width's slice of one matquant int8 checkpoint against GPTQ run for that width alone (same Hessian).

    python benchmarks/matquant_layers.py [--samples 16] [--seq-len 512] [--blocks 0 1 ...] [--group 64]
        [--sym] [--opt key=value ...] [--tag NAME]

Hessians come from the float model (every block's inputs propagated in float), so each layer is judged on
the same H by both solvers. --opt passes matquant options (e.g. weights=1,1,1). Writes one JSON line per
linear to benchmarks/results/matquant_layers.jsonl (tagged with the options) as it goes.
"""
import argparse
import json
from pathlib import Path


from decoupleq_objective import hessians_of_blocks
from edgeq.quant import grid
from edgeq.solvers import get_method, get_solver, weighted_error

RESULTS = Path(__file__).resolve().parent / "results" / "matquant_layers.jsonl"
WIDTHS = (8, 4, 2)


def parse_options(pairs):
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        out[key] = tuple(float(v) for v in value.split(",")) if "," in value else value
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--blocks", type=int, nargs="*", default=list(range(30)))
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--opt", nargs="*", default=[])
    parser.add_argument("--sym", action="store_true", help="symmetric int8 grid (zero point 128)")
    parser.add_argument("--tag", default="default")
    args = parser.parse_args()
    options = get_method("matquant").keywords(parse_options(args.opt))
    print("| block | linear | " + " | ".join(f"int{r} slice / gptq W{r}" for r in WIDTHS) + " |")
    for block, name, W, H in hessians_of_blocks(set(args.blocks), args.samples, args.seq_len):
        mq = get_solver("matquant")(W, H, grid.QuantSpec(8, args.group, args.sym), **options)
        row = {"tag": args.tag, "options": {k: str(v) for k, v in options.items()}, "block": block,
               "linear": name, "samples": args.samples, "group": args.group, "sym": args.sym}
        for r in WIDTHS:
            own = get_solver("gptq")(W, H, grid.QuantSpec(r, args.group))
            row[f"gptq_w{r}"] = weighted_error(W, own.dequantize(), H)
            row[f"slice_w{r}"] = weighted_error(W, mq.slice(r).dequantize() if r < 8 else mq.dequantize(), H)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"| {block} | {name} | " + " | ".join(f"{row[f'slice_w{r}'] / row[f'gptq_w{r}']:.2f}"
                                                   for r in WIDTHS) + " |", flush=True)


if __name__ == "__main__":
    main()

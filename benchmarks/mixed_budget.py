"""Mixed precision on the bundled SmolLM2-135M: held-out perplexity against the size budget, for each
sensitivity estimator, with uniform GPTQ widths and a hand-made 2/4 mix as reference points.

    python benchmarks/mixed_budget.py [--work runs/mixed] [--budgets 2.25 2.5 ...] [--plot mixed.png] [--onnx]
                                      [--other-budgets 3.0] [--block-epochs 2]

The estimates are measured once (the first budget's run) and reused by every other run through
--sensitivity-from. Size is counted two ways: code bits per weight (what --budget 3.0 means; scales and
zero points not counted) and the megabytes of MatMulNBits weights onnxruntime stores (3-bit in a 4-bit
container, float32 scales). Checkpoints and results already in --work are reused (delete them to rerun).
"""
import argparse
import json
import sys
from pathlib import Path

from quality import SHARED_TEXT, cached_perplexity, checkpoint, edgeq

from edgeq.mixed import cost

UNIFORM = {"gptq-w2-g64": (2, 64), "gptq-w3-g128": (3, 128), "gptq-w4-g128": (4, 128)}
# By hand, half the weights at 4 bits (3.0 bits on average): attention and down_proj, the usual picks
HAND = ("--bits", 2, "--group-size", 64, "--layer-grid", "self_attn=4:128", "--layer-grid", "down_proj=4:128")


def sizes(ckpt: Path) -> tuple[float, float]:
    """(code bits per weight, MB of MatMulNBits weights) of a checkpoint's quantized linears."""
    layers = json.loads((ckpt / "quantization.json").read_text())["layers"]
    weights = sum(n * k for n, k in (v["shape"] for v in layers.values()))
    bits = sum(v["bits"] * v["shape"][0] * v["shape"][1] for v in layers.values())
    size = sum(cost(name, tuple(v["shape"]), _spec(v), "mb") for name, v in layers.items())
    return bits / weights, size / 2 ** 20


def _spec(layer: dict):
    from edgeq.grid import QuantSpec
    return QuantSpec(layer["bits"], layer["group_size"])


def runs(work: Path, args) -> list[tuple[str, str, Path]]:
    """(series, label, checkpoint) of every point, quantizing what is missing."""
    first = checkpoint(work, f"{args.estimators[0]}-{args.budgets[0]}", "--budget", args.budgets[0],
                       "--sensitivity", args.estimators[0])
    points = []
    for est in args.estimators:
        for budget in args.budgets if est == args.estimators[0] else args.other_budgets:
            ckpt = checkpoint(work, f"{est}-{budget}", "--budget", budget, "--sensitivity", est,
                              "--sensitivity-from", first)
            points.append((f"mixed ({est})", f"{est} {budget}", ckpt))
            print(f"done {ckpt.name}", file=sys.stderr, flush=True)
    for name, (bits, group) in UNIFORM.items():
        points.append(("uniform GPTQ", name, checkpoint(work, name, "--bits", bits, "--group-size", group)))
    points.append(("hand mix", "W2 g64 + attention, down_proj W4 g128", checkpoint(work, "hand-2-4", *HAND)))
    if args.block_epochs:  # both sides with the same block training, after the solver
        bt = ("--block-epochs", args.block_epochs)
        name = f"{args.estimators[0]}-{args.budgets[0]}-bt{args.block_epochs}"
        points.append((f"block-trained ({args.block_epochs} epochs)", name, checkpoint(
            work, name, "--budget", args.budgets[0], "--sensitivity-from", first, *bt)))
        points.append((f"block-trained ({args.block_epochs} epochs)", f"gptq-w3-g128-bt{args.block_epochs}", checkpoint(
            work, f"gptq-w3-g128-bt{args.block_epochs}", "--bits", 3, "--group-size", 128, *bt)))
    return points


def plot(rows, fp: float, path: str) -> None:
    """Perplexity against code bits (left) and against the bytes onnxruntime stores (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, column, xlabel in ((axes[0], 3, "code bits per weight (quantized linears)"),
                               (axes[1], 4, "MB of MatMulNBits weights in onnxruntime (3-bit stored as 4)")):
        for series in dict.fromkeys(r[0] for r in rows):
            pts = sorted((r[column], r[5]) for r in rows if r[0] == series)
            style = "-o" if series.startswith("mixed") else "s" if series.startswith("uniform") else "*"
            ax.plot(*zip(*pts), style, label=series, markersize=9 if style == "*" else 6)
        for r in rows:
            if r[0].startswith("uniform"):
                ax.annotate(r[2].replace("gptq-", ""), (r[column], r[5]), fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        ax.axhline(fp, color="gray", linestyle=":", label="fp32")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("held-out perplexity (Persuasion)")
    axes[0].legend()
    fig.suptitle("SmolLM2-135M: mixed 2/4/8-bit GPTQ under a budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/mixed")
    parser.add_argument("--budgets", nargs="*", type=float, default=[3.0, 2.25, 2.5, 2.75, 3.25, 3.5, 4.0])
    parser.add_argument("--estimators", nargs="*", default=["fisher", "hessian"], choices=["fisher", "hessian"],
                        help="the first runs at every --budgets, the others at --other-budgets")
    parser.add_argument("--other-budgets", nargs="*", type=float, default=[3.0])
    parser.add_argument("--block-epochs", type=int, default=0,
                        help="also the first budget and uniform W3 g128, both with this block training")
    parser.add_argument("--text", default=str(SHARED_TEXT))
    parser.add_argument("--max-windows", type=int, default=60)
    parser.add_argument("--plot", help="PNG of perplexity against code bits per weight")
    parser.add_argument("--onnx", action="store_true", help="export the first mixed run and evaluate it in ORT")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp = cached_perplexity(work, None, "fp", args.text, args.max_windows)
    rows = [(series, label, ckpt.name, *sizes(ckpt), cached_perplexity(work, ckpt, ckpt.name, args.text,
                                                                       args.max_windows))
            for series, label, ckpt in runs(work, args)]
    print(f"fp32 {fp:.2f}; held-out {args.text}, {args.max_windows} windows x 512 tokens\n")
    print("| series | run | code bits / weight | MatMulNBits MB | perplexity |")
    print("|---|---|---|---|---|")
    for series, label, _, bits, mb, ppl in sorted(rows, key=lambda r: (r[0], r[3])):
        print(f"| {series} | {label} | {bits:.3f} | {mb:.2f} | {ppl:.2f} |")
    if args.plot:
        plot(rows, fp, args.plot)
    if args.onnx:
        ckpt = work / rows[0][2]
        onnx_dir = work / f"{ckpt.name}-onnx"
        if not (onnx_dir / "model.onnx").is_file():
            edgeq("export", ckpt, "--out", onnx_dir)
        ort = cached_perplexity(work, onnx_dir, onnx_dir.name, args.text, args.max_windows)
        print(f"\nonnxruntime {ckpt.name}: {ort:.2f} vs torch {rows[0][5]:.2f} ({100 * (ort / rows[0][5] - 1):+.2f}%)")


if __name__ == "__main__":
    main()

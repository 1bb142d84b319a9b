"""Mix'n'Match's perplexity against the average code bits, from one nested int8 file, beside each width
quantized on its own: read from the method table's results (benchmarks/quality.py rows), nothing rerun.

    python benchmarks/quality.py --only matquant            # the rows this plots (and gptq W* g64)
    python benchmarks/mixnmatch_curve.py [--method matquant] [--png benchmarks/results/mixnmatch.png]

Prints a markdown table (average bits, perplexity / fp32 on each held-out text) and writes the PNG
(needs matplotlib).
"""
import argparse
from pathlib import Path

from quality import PROTOCOLS, RESULTS, latest, read_results

SEPARATE = {  # width-specific GPTQ, each quantized on its own (label in the table -> code bits)
    "gptq W2 g64": 2, "gptq W4 g64": 4, "gptq W8 g64 --sym": 8,
    "gptq W2 g64 --sym": 2, "gptq W4 g64 --sym": 4,
}


def curve_points(rows: dict, method: str) -> list[tuple[str, float, dict]]:
    """(series, average bits, {text: ppl / fp}) for the nested file's slices and the separate checkpoints."""
    points = []
    for label, r in rows.items():
        if r["method"] == method and r["bits"] == 8 and r.get("slice_bits") is not None:
            kind = "one int8 file, a width per layer" if isinstance(r["slice_bits"], float) else "one int8 file, uniform slice"
            points.append((" ".join([kind, *r["flags"]]), float(r["slice_bits"]), r["eval"]))
        elif label in SEPARATE:
            kind = "gptq per width, symmetric" if "--sym" in label and SEPARATE[label] != 8 else "gptq per width"
            points.append((kind, float(SEPARATE[label]), r["eval"]))
    return sorted(points, key=lambda p: (p[0], p[1]))


def markdown(points, texts) -> str:
    lines = ["| series | bits | " + " | ".join(f"{t} ppl (x fp32)" for t in texts) + " |",
             "|---|---|" + "---|" * len(texts)]
    for kind, bits, ev in points:
        lines.append(f"| {kind} | {bits:g} | " + " | ".join(
            f"{ev[t]['perplexity']:.2f} ({ev[t].get('over_fp', float('nan')):.3f})" for t in texts) + " |")
    return "\n".join(lines)


def plot(points, texts, path: Path, method: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(texts), figsize=(5.5 * len(texts), 4), squeeze=False)
    for ax, text in zip(axes[0], texts):
        for kind in sorted({p[0] for p in points}):
            xs = [b for k, b, _ in points if k == kind]
            ys = [ev[text]["over_fp"] for k, _, ev in points if k == kind]
            ax.plot(xs, ys, "o-" if "file" in kind else "s--", label=kind)
        ax.set_yscale("log")
        ax.set_xlabel("average code bits per weight")
        ax.set_ylabel("perplexity / fp32")
        ax.set_title(f"{method}, held-out {text}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="matquant")
    parser.add_argument("--protocol", default="standard", choices=list(PROTOCOLS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--png", type=Path, help="write the plot here (needs matplotlib)")
    args = parser.parse_args()
    protocol = PROTOCOLS[args.protocol]
    points = curve_points(latest(read_results(args.results), protocol.name), args.method)
    if not points:
        raise SystemExit(f"no {args.method} rows in {args.results}: run benchmarks/quality.py --only {args.method}")
    texts = [label for label, _ in protocol.texts]
    print(markdown(points, texts))
    if args.png:
        plot(points, texts, args.png, args.method)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()

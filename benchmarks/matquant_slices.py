"""MatQuant on the bundled SmolLM2-135M: each width r of one int8 checkpoint against naive slicing of a plain
(symmetric) int8 GPTQ checkpoint and against GPTQ run for width r alone; held-out Persuasion perplexity.

    python benchmarks/matquant_slices.py [--groups 128 64] [--work runs/matquant] [--max-windows 60]

Checkpoints and results already in --work are reused (delete them to rerun). Every quantize and eval is a
separate `edgeq` process, as a user would run it; the slices are `edgeq eval CKPT --bits r` (torch).
With --onnx, the g128 MatQuant checkpoint is also exported once (int8) and each width is evaluated by
onnxruntime on that one file sliced in memory (`edgeq eval ONNX_DIR --bits r`).
"""
import argparse
from pathlib import Path

from quality import SHARED_TEXT, cached_perplexity, checkpoint, edgeq

WIDTHS = (8, 4, 2)


def ppl(work: Path, model: Path, label: str, args, *flags) -> float:
    return cached_perplexity(work, model, label, args.text, args.max_windows, *flags)


def row(work, group, args):
    mq = checkpoint(work, f"matquant-g{group}", "--method", "matquant", "--group-size", group)
    int8 = checkpoint(work, f"gptq-w8-g{group}-sym", "--bits", 8, "--group-size", group, "--sym")
    out = {}
    for r in WIDTHS:
        own = int8 if r == 8 else checkpoint(work, f"gptq-w{r}-g{group}", "--bits", r, "--group-size", group)
        out[r] = {"matquant": ppl(work, mq, f"{mq.name}-b{r}", args, "--bits", r),
                  "naive": ppl(work, int8, f"{int8.name}-b{r}", args, "--bits", r),
                  "own": ppl(work, own, own.name, args)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="*", type=int, default=[128, 64])
    parser.add_argument("--work", default="runs/matquant")
    parser.add_argument("--text", default=str(SHARED_TEXT))
    parser.add_argument("--max-windows", type=int, default=60)
    parser.add_argument("--onnx", action="store_true", help="also the onnxruntime figures of the g128 slices")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp = ppl(work, None, "fp", args)
    print(f"fp32 {fp:.2f}; held-out {args.text}, {args.max_windows} windows x 512 tokens\n")
    print("| group | width | MatQuant slice | naive slice of int8 GPTQ | GPTQ for that width | MatQuant / GPTQ |")
    print("|---|---|---|---|---|---|")
    for group in args.groups:
        for r, v in row(work, group, args).items():
            print(f"| {group} | int{r} | {v['matquant']:.2f} | {v['naive']:.2f} | {v['own']:.2f} | "
                  f"{v['matquant'] / v['own']:.3f} |")
    if args.onnx:
        onnx_dir = work / "matquant-g128-onnx"
        if not (onnx_dir / "model.onnx").is_file():
            edgeq("export", work / "matquant-g128", "--out", onnx_dir)
        print("\n| width | torch | onnxruntime (int8 file sliced in memory, accuracy level 4) | diff |")
        print("|---|---|---|---|")
        for r in WIDTHS:
            t = ppl(work, work / "matquant-g128", f"matquant-g128-b{r}", args, "--bits", r)
            o = ppl(work, onnx_dir, f"matquant-g128-onnx-b{r}", args, "--bits", r)
            print(f"| int{r} | {t:.2f} | {o:.2f} | {100 * (o / t - 1):+.2f}% |")


if __name__ == "__main__":
    main()

"""Quality table on the bundled SmolLM2-135M: held-out Austen-Persuasion perplexity, quantize time, peak RSS.

    python benchmarks/quality.py [--samples 128] [--max-windows 60] [--work runs/quality] [--rows ...]

Every row runs `edgeq quantize` and `edgeq eval` as separate processes, exactly as a user would, so the
peak RSS of each row is that quantize process's own. Calibration: the packaged Pride and Prejudice
(never Persuasion). CAVEAT: the bundled weights were stored as GGUF Q4_1 (blocks of 32), so asymmetric
4-bit with group 32 is nearly lossless by construction; rows use group 64/128, per-channel, 3 and 2 bits.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "austen_persuasion.txt"
ROWS = {  # name: (bits, group size)
    "W4 g128": (4, "128"), "W3 g128": (3, "128"), "W2 g64": (2, "64"), "W4 per-channel": (4, "channel"),
    "W2 per-channel": (2, "channel")}
METHODS = {"rtn": ["--method", "rtn"], "rtn-mse": ["--method", "rtn", "--clip", "mse"], "gptq": ["--method", "gptq"],
           "decoupleq": ["--method", "decoupleq"], "signround": ["--method", "signround"],
           "flexround": ["--method", "flexround"], "lrq": ["--method", "lrq"],
           "addround": ["--method", "flexround", "--rounding-rule", "addition"]}  # FlexRound's ablation


def edgeq(*args):
    result = subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"edgeq {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def perplexity(model, text, max_windows, json_path, *flags):
    edgeq("eval", *([model] if model else []), "--text", text, "--max-windows", max_windows, "--quiet",
          "--json", json_path, *flags)
    return json.loads(Path(json_path).read_text())


def checkpoint(work: Path, name: str, *flags) -> Path:
    """work/name quantized with these flags, unless a finished checkpoint is already there."""
    out = work / name
    if not (out / "quantization.json").is_file():
        edgeq("quantize", *flags, "--out", out, "--quiet")
    return out


def cached_perplexity(work: Path, model, label: str, text, max_windows, *flags) -> float:
    """Held-out perplexity of model (None = fp32), from work/label.json when an earlier run left it."""
    path = work / f"{label}.json"
    if not path.is_file():
        perplexity(model, text, max_windows, path, *flags)
    return json.loads(path.read_text())["perplexity"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=60, help="held-out windows of seq-len tokens")
    parser.add_argument("--text", default=str(SHARED_TEXT), help="held-out text (default: Persuasion)")
    parser.add_argument("--work", default="runs/quality", help="folder for checkpoints and results")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more edgeq quantize flags")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    fp = perplexity(None, args.text, args.max_windows, work / "fp.json")
    results = []
    for row in args.rows:
        bits, group = ROWS[row]
        for method in args.methods:
            out = work / f"{method}-w{bits}-g{group}"
            shutil.rmtree(out, ignore_errors=True)
            edgeq("quantize", *METHODS[method], "--bits", bits, "--group-size", group, "--samples", args.samples,
                  "--seq-len", args.seq_len, "--out", out, "--quiet", *args.extra)
            stats = json.loads((out / "quantization.json").read_text())["stats"]
            ppl = perplexity(out, args.text, args.max_windows, work / f"{out.name}.json")["perplexity"]
            results.append((row, method, ppl, stats))
            print(f"done {row} {method}: {ppl:.2f}", file=sys.stderr, flush=True)

    print(f"\nSmolLM2-135M (bundled; weights stored as GGUF Q4_1, so W4 g32 asym is near-lossless by construction)")
    print(f"held-out: {fp['text']}, {fp['windows']} windows x {fp['seq_len']} tokens; calibration: packaged "
          f"Pride and Prejudice, {args.samples} x {args.seq_len} tokens\n")
    print(f"| {'config':<15} | {'method':<9} | {'perplexity':>10} | {'x fp':>6} | {'quantize s':>10} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 17}|{'-' * 11}|{'-' * 12}|{'-' * 8}|{'-' * 12}|{'-' * 13}|")
    print(f"| {'fp32':<15} | {'-':<9} | {fp['perplexity']:>10.2f} | {1:>6.2f} | {'-':>10} | {'-':>11} |")
    for row, method, ppl, s in results:
        seconds = s["seconds_load"] + s["seconds_quantize"]
        print(f"| {row:<15} | {method:<9} | {ppl:>10.2f} | {ppl / fp['perplexity']:>6.2f} | {seconds:>10.1f} | "
              f"{s['peak_rss_mb']:>11.0f} |")
    (work / "table.json").write_text(json.dumps({"fp": fp, "rows": results}, indent=2))


if __name__ == "__main__":
    main()

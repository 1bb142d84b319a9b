"""What the output head's width costs: GPTQ W4 g128 of the bundled model exported with a float head, the
exporter's round-to-nearest 8- and 4-bit heads, and heads solved with the model (`edgeq quantize
--lm-head`), each evaluated by onnxruntime (accuracy level 4) on the method table's held-out windows.

    python benchmarks/quality.py --only "gptq W4 g128"   # the float-head checkpoint, if not made yet
    python benchmarks/head_widths.py [--work runs/quality]

Each row is a quantize (when its checkpoint is missing), an export and an eval, every one an `edgeq`
process; each finished row is appended to benchmarks/results/head_widths.jsonl at once.
"""
import argparse
import json
import time
from pathlib import Path

from harness import git_commit, read_results
from quality import PROTOCOLS, ROOT, Row, checkpoint_dir, edgeq, evaluate

RESULTS = ROOT / "benchmarks" / "results" / "head_widths.jsonl"
ROWS = [  # (label, the checkpoint's row, export flags)
    ("float head", Row("gptq", 4, "128"), ["--lm-head", "fp"]),
    ("8-bit head, round to nearest at export", Row("gptq", 4, "128"), ["--lm-head", "8"]),
    ("4-bit head, round to nearest at export", Row("gptq", 4, "128"), ["--lm-head", "4"]),
    ("8-bit head, GPTQ with the model", Row("gptq", 4, "128", ("--lm-head", "8")), []),
    ("4-bit head, GPTQ with the model", Row("gptq", 4, "128", ("--lm-head", "4")), []),
]


def folder_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2 ** 20, 1)


def run(label, row, flags, protocol, work: Path) -> dict:
    ckpt = checkpoint_dir(work, row, protocol)
    if not (ckpt / "quantization.json").is_file():
        edgeq("quantize", *row.quantize_args(protocol), "--out", ckpt, "--quiet")
    onnx_dir = work / f"{ckpt.name}-onnx{''.join(flags).replace('--lm-head', '-head')}"
    if not (onnx_dir / "model.onnx").is_file():
        edgeq("export", ckpt, "--out", onnx_dir, *flags)
    return {"label": label, "protocol": protocol.name, "checkpoint": row.label, "export_flags": flags,
            "eval": evaluate(onnx_dir, protocol, work, []), "folder_mb": folder_mb(onnx_dir),
            "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--protocol", default="standard", choices=list(PROTOCOLS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    protocol = PROTOCOLS[args.protocol]
    done = {r["label"] for r in read_results(args.results) if r["protocol"] == protocol.name}
    for label, row, flags in ROWS:
        if label in done:
            continue
        record = run(label, row, flags, protocol, args.work)
        with args.results.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        print(f"{label}: " + ", ".join(f"{t} {v['perplexity']:.2f}" for t, v in record["eval"].items())
              + f", {record['folder_mb']} MB", flush=True)


if __name__ == "__main__":
    main()

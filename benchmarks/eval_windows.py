"""How many evaluation windows `edgeq eval` needs by default: per-window NLL of every 512-token window of the
packaged Persuasion for fp32 and for quantized checkpoints, then the perplexity (and its ratio to fp32)
of the first N windows against all of them.

    python benchmarks/eval_windows.py CKPT [CKPT ...]    # checkpoints to compare with fp32
Writes benchmarks/results/eval_windows.json (per-window NLL sums, so other N can be read off later).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "eval_windows.json"
COUNTS = (10, 20, 40, 80, 120)


def per_window_nll(model: str | None, seq_len: int) -> list[float]:
    from edgeq.evaluation import heldout
    body, _ = heldout.read_text(None)
    _, tokenizer, score, _ = heldout.scorer(model)
    windows = heldout.eval_windows(heldout.token_ids(tokenizer, body), seq_len)
    out = []
    for i in range(windows.shape[0]):
        nll, count = score(windows[i:i + 1])
        out.append(nll / count)
        print(f"\r{model or 'fp32'}: window {i + 1}/{windows.shape[0]}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def summary(nll: dict[str, list[float]]) -> list[dict]:
    """Per N: each model's perplexity of the first N windows, its ratio to fp32, and both relative to all."""
    rows = []
    for n in (*COUNTS, len(nll["fp32"])):
        ppl = {m: math.exp(sum(v[:n]) / n) for m, v in nll.items()}
        full = {m: math.exp(sum(v) / len(v)) for m, v in nll.items()}
        rows.append({"windows": n, **{m: {"ppl": round(p, 3), "ppl_vs_all": round(p / full[m] - 1, 4),
                                          "x_fp32": round(p / ppl["fp32"], 4),
                                          "x_fp32_vs_all": round(p / ppl["fp32"] / (full[m] / full["fp32"]) - 1, 4)}
                                      for m, p in ppl.items()}})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*")
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args(argv)
    started = time.time()
    nll = {}
    for model in [None, *args.checkpoints]:  # the file is rewritten after each model: a killed run keeps them
        nll["fp32" if model is None else Path(model).name] = per_window_nll(model, args.seq_len)
        result = {"seq_len": args.seq_len, "text": "packaged Persuasion", "seconds": round(time.time() - started),
                  "summary": summary(nll), "per_window_nll": nll}
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    for row in result["summary"]:
        print(row["windows"], {m: (v["ppl_vs_all"], v["x_fp32_vs_all"]) for m, v in row.items() if m != "windows"})


if __name__ == "__main__":
    main()

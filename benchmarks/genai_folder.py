"""One exported folder run in onnxruntime-genai (the runtime apps embed) beside edgeq's own onnxruntime loop:
the logits of every step (the prompt, then forced tokens on genai's own KV cache) against ours, both greedy
continuations, and the time genai takes to load the folder and decode. The tests do this on tiny models of
each family; this is the same check on a real model's folder (weights in external data, 28 blocks).

    python benchmarks/genai_folder.py runs/scale/<model>/quantized-onnx --label qwen2.5-coder-1.5b-w4

Writes benchmarks/results/genai_<label>.json.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgeq.runtime.genai import GenaiDecoder
from edgeq.runtime.session import OrtDecoder
from edgeq.runtime.tokenizer import load_tokenizer
from harness import git_commit, machine
from quality import ROOT

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def relative_errors(got: np.ndarray, expected: np.ndarray) -> list[float]:
    return [float(np.linalg.norm(g - e) / np.linalg.norm(e)) for g, e in zip(got, expected)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--label", required=True)
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens from each engine")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    tokenizer, eos = load_tokenizer(args.folder)
    prompt = tokenizer.encode(PROMPT, add_special_tokens=False).ids

    ours = OrtDecoder.from_folder(args.folder, args.threads)
    our_tokens = ours.greedy(prompt, args.tokens, eos)
    forced = our_tokens[:8]  # our own continuation, fed to genai token by token
    expected = ours.forced_logits(prompt, forced)
    del ours

    start = time.perf_counter()
    genai = GenaiDecoder(args.folder, args.threads)
    load_seconds = time.perf_counter() - start
    got = genai.forced_logits(prompt, forced)
    start = time.perf_counter()
    genai_tokens = genai.greedy(prompt, args.tokens)
    greedy_seconds = time.perf_counter() - start

    errors = relative_errors(got, expected)
    record = {
        "folder": str(args.folder), "label": args.label, "prompt_tokens": len(prompt),
        "step_relative_logit_errors": [round(e, 8) for e in errors],
        "same_argmax_every_step": bool((got.argmax(-1) == expected.argmax(-1)).all()),
        "greedy_tokens_equal": genai_tokens == our_tokens, "greedy_tokens": len(genai_tokens),
        "genai_text": tokenizer.decode(genai_tokens), "ours_text": tokenizer.decode(our_tokens),
        "genai_load_seconds": round(load_seconds, 2),
        "genai_greedy_seconds": round(greedy_seconds, 2),  # the prompt's forward and every token
        "threads": args.threads, "commit": git_commit(), "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = ROOT / "benchmarks" / "results" / f"genai_{args.label}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("step_relative_logit_errors", "same_argmax_every_step",
                                             "greedy_tokens_equal", "genai_load_seconds",
                                             "genai_greedy_seconds")}, indent=1))
    print("genai:", record["genai_text"])


if __name__ == "__main__":
    main()

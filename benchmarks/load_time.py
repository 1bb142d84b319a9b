"""The load phase of `edgeq quantize` (validation, config, tokenizer, calibration windows, the streamed model),
as quantization.json's stats.seconds_load records it, on the bundled model. Each run is a fresh process, so
the time includes importing transformers; the float cache of the GGUF exists (the first run ever converts it,
~20 s, and is not what this measures: run once before timing). `--tree DIR` times another checkout of edgeq
(a git worktree of an older commit) in the same session, for a before/after ratio.

    python benchmarks/load_time.py --repeat 3 --method gptq [--tree /tmp/before --label before]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import RESULTS_DIR, append_result, stamp

RESULTS = RESULTS_DIR / "load_time.jsonl"


def seconds_load(tree: Path, method: str) -> float:
    """The seconds_load of one whole `edgeq quantize` of the bundled model with `tree` first on the path (gptq
    runs with --samples 8 to keep the rest of the run short; the load still tokenizes the calibration text)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ckpt"
        args = [sys.executable, "-m", "edgeq.cli", "quantize", "--method", method, "--out", str(out), "--quiet"]
        if method != "rtn":
            args += ["--samples", "8"]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(args, check=True, env=env, cwd=tmp, capture_output=True)
        return json.loads((out / "quantization.json").read_text())["stats"]["seconds_load"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--method", default="rtn")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--label", default="working tree")
    args = parser.parse_args()
    times = [seconds_load(args.tree, args.method) for _ in range(args.repeat)]
    record = {**stamp(), "label": args.label, "tree": str(args.tree), "method": args.method, "seconds_load": times,
              "min": min(times)}
    append_result(RESULTS, record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()

"""A model other than the bundled one, end to end, phase by phase: float perplexity, quantize, perplexity,
export (quantized and float), onnxruntime perplexity, bench; each phase's wall time and peak RSS (of its
own `edgeq` process, from os.wait4) appended to benchmarks/results/scale.jsonl the moment it ends.

    python benchmarks/scale.py MODEL.gguf|FOLDER [--method gptq --bits 4 --group-size 128] [--work runs/scale]
    sudo python benchmarks/scale.py MODEL --phases quantize --memory-cap 4G   # inside a 4 GB cgroup

A phase whose output is already in --work is not run again (its row is not rewritten), so an interrupted
run resumes. Calibration, held-out texts and windows are the method table's protocol (quality.py;
the default calibration's by default); --windows scores fewer windows where a model is slow to evaluate.
--memory-cap caps the quantize phase (the other phases of a model too big for the cap, such as the float
model's evaluation, run uncapped); a capped run works in a folder of its own, so its checkpoint can be
compared with the uncapped one (tensors_sha256 in each quantize row).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from head_widths import folder_mb
from memcap import MemoryCap
from harness import git_commit, machine
from quality import PROTOCOLS, ROOT

RESULTS = ROOT / "benchmarks" / "results" / "scale.jsonl"


def edgeq_measured(*args, cap: MemoryCap | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one `edgeq` process, inside `cap`'s memory group if given; raises
    with its stderr when it fails."""
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "edgeq.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=cap.enter if cap else None)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        why = f"exit {code}" if code > 0 else f"killed by signal {-code}"
        if code == -9:
            why += " (out of memory?)"
        raise RuntimeError(f"edgeq {' '.join(map(str, args))} failed ({why}):\n{stderr[-2000:]}")
    return round(time.time() - started, 1), round(usage.ru_maxrss / 1024, 1)  # Linux: KiB


def eval_args(protocol, windows: int, out: Path) -> list:
    return ["--text", *[t for _, t in protocol.texts], "--seq-len", protocol.seq_len, "--max-windows",
            windows, "--json", out, "--quiet"]


def perplexities(protocol, path: Path) -> dict:
    results = json.loads(path.read_text())
    results = results if isinstance(results, list) else [results]
    return {label: round(r["perplexity"], 4) for (label, _), r in zip(protocol.texts, results)}


def quantize_record(checkpoint: Path) -> dict:
    meta = json.loads((checkpoint / "quantization.json").read_text())
    return {"stats": meta["stats"], "tensors_sha256": meta["tensors_sha256"]}


def phases(model: str, spec: list[str], work: Path, protocol, windows: int) -> list[tuple[str, Path, list, callable]]:
    """(phase, the output that marks it done, edgeq arguments, what to record from the output)."""
    ckpt, q_onnx, fp_onnx = work / "checkpoint", work / "quantized-onnx", work / "fp32-onnx"
    eval_args_to = lambda out: eval_args(protocol, windows, out)  # noqa: E731
    ppl = lambda p: {"perplexity": perplexities(protocol, p)}  # noqa: E731
    size = lambda p: {"folder_mb": folder_mb(p)}  # noqa: E731
    bench = lambda p: {"bench": [{k: r.get(k) for k in ("name", "file_mb", "decode_ms_per_token", "prefill_ms", "load_rss_mb")}  # noqa: E731
                                 for r in json.loads(p.read_text())["models"]]}
    return [
        ("fp32 eval", work / "fp32-eval.json", ["eval", model, *eval_args_to(work / "fp32-eval.json")], ppl),
        ("quantize", ckpt, ["quantize", model, *spec, "--out", ckpt, "--quiet"], quantize_record),
        ("eval", work / "eval.json", ["eval", ckpt, *eval_args_to(work / "eval.json")], ppl),
        ("export", q_onnx, ["export", ckpt, "--out", q_onnx], size),
        ("export fp32", fp_onnx, ["export", "--fp32", model, "--out", fp_onnx], size),
        ("onnx eval", work / "onnx-eval.json", ["eval", q_onnx, *eval_args_to(work / "onnx-eval.json")], ppl),
        ("bench", work / "bench.json", ["bench", fp_onnx, q_onnx, "--threads", "2", "--json", work / "bench.json",
                                        "--quiet"], bench),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--bits", default="4")
    parser.add_argument("--group-size", default="128")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "scale")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--protocol", default="standard-512x128", choices=list(PROTOCOLS))
    parser.add_argument("--windows", type=int, help="held-out windows per text (default: the protocol's)")
    parser.add_argument("--phases", help="comma-separated phases to run now (default: all, in order)")
    parser.add_argument("--memory-cap", help="quantize inside a cgroup v1 memory group of this size (4G; root only)")
    args = parser.parse_args()
    protocol = PROTOCOLS[args.protocol]
    windows = args.windows or protocol.windows
    spec = ["--method", args.method, "--bits", args.bits, "--group-size", args.group_size, *protocol.calib_flags]
    cap_suffix = f"-cap{args.memory_cap}" if args.memory_cap else ""
    work = args.work / f"{Path(args.model).stem}-{args.method}-w{args.bits}-g{args.group_size}{cap_suffix}"
    work.mkdir(parents=True, exist_ok=True)
    chosen = args.phases.split(",") if args.phases else None
    for phase, output, edgeq_args, record_of in phases(args.model, spec, work, protocol, windows):
        if output.exists() or (chosen and phase not in chosen):
            continue
        extra = {}
        if args.memory_cap and phase == "quantize":
            with MemoryCap(args.memory_cap) as cap:
                seconds, peak = edgeq_measured(*edgeq_args, cap=cap)
            extra = {"memory_cap": args.memory_cap, "cgroup_max_usage_mb": cap.max_usage_mb,
                     "cgroup_failcnt": cap.failcnt}
        else:
            seconds, peak = edgeq_measured(*edgeq_args)
        record = {"model": args.model, "spec": " ".join(spec), "phase": phase, "seconds": seconds,
                  "peak_rss_mb": peak, "protocol": protocol.name, "windows": windows, **extra,
                  **record_of(output), "commit": git_commit(), "machine": machine(),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with args.results.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        print(f"{phase}: {seconds} s, peak RSS {peak} MB", flush=True)


if __name__ == "__main__":
    main()

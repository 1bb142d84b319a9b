"""A model as the Hub stores it (bf16 safetensors in shards with model.safetensors.index.json) against the same
model from its GGUF: quantize each (its own `edgeq` process: wall time, peak RSS from os.wait4) and score both
checkpoints on the method table's held-out texts. Rows to benchmarks/results/bf16_shards.jsonl as each ends.

    python benchmarks/bf16_shards.py qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --samples 128 --windows 10

The bf16 folder is written from the GGUF's float cache (edgeq's own conversion), one tensor at a time, in
shards of at most --shard-mb: the layout of a Hub repository. Its weights are the GGUF's rounded to bf16, so
the two checkpoints differ by that rounding only. --samples cuts calibration (default 128 x 128 tokens, a
quarter of the table's) so that each quantize of a 1.5B model fits in the half hour a measurement may take.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

from harness import git_commit, machine
from quality import PROTOCOLS, ROOT
from scale import edgeq_measured, eval_args, perplexities

RESULTS = ROOT / "benchmarks" / "results" / "bf16_shards.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def write_bf16_shards(float_folder: Path, out: Path, shard_mb: int) -> None:
    """The float folder's tensors as bf16 shards + index, its config saying bfloat16, its tokenizer files."""
    import torch
    from safetensors import safe_open

    from edgeq.io import models
    from edgeq.io.checkpoint import save_tensors
    files = models.weight_files(float_folder)
    out.mkdir(parents=True)
    shards, current, size = [], {}, 0
    for name in sorted(files, key=lambda n: (str(files[n]), n)):
        with safe_open(str(files[name]), "pt") as f:
            tensor = f.get_tensor(name).to(torch.bfloat16)
        if current and size + tensor.numel() * 2 > shard_mb << 20:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += tensor.numel() * 2
        if size >= shard_mb << 20:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_tensors(out / file, shard, {"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    (out / models.INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))},
                                               indent=2))
    config = json.loads((float_folder / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (float_folder / name).exists():
            shutil.copy(float_folder / name, out / name)


def record(row: dict) -> None:
    row.update(commit=git_commit(), machine=machine(), date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    with RESULTS.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    print(json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--shard-mb", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bf16")
    args = parser.parse_args()
    from edgeq.io import models
    protocol = PROTOCOLS["standard-512x128"]
    work = args.work / args.gguf.stem
    bf16 = work / "bf16-shards"
    if not bf16.exists():
        started = time.time()
        write_bf16_shards(models.float_folder(models.resolve_source(str(args.gguf))), bf16, args.shard_mb)
        print(f"wrote {bf16} in {time.time() - started:.0f} s", flush=True)
    spec = ["--method", "gptq", "--bits", "4", "--group-size", "128", "--samples", str(args.samples),
            "--seq-len", "128", "--seed", "0"]
    for source, model in (("bf16 shards", bf16), ("gguf", args.gguf)):
        checkpoint = work / f"w4-from-{source.replace(' ', '-')}"
        if not checkpoint.exists():
            seconds, peak = edgeq_measured("quantize", model, *spec, "--out", checkpoint, "--quiet")
            stats = json.loads((checkpoint / "quantization.json").read_text())["stats"]
            record({"source": source, "phase": "quantize", "spec": " ".join(spec), "seconds": seconds,
                    "peak_rss_mb": peak, "fp32_parameter_mb": stats["fp32_parameter_mb"],
                    "peak_over_fp32": round(peak / stats["fp32_parameter_mb"], 3), "stats": stats})
        scores = work / f"eval-{source.replace(' ', '-')}.json"
        if not scores.exists():
            seconds, peak = edgeq_measured("eval", checkpoint, *eval_args(protocol, args.windows, scores))
            record({"source": source, "phase": "eval", "windows": args.windows, "seconds": seconds,
                    "peak_rss_mb": peak, "perplexity": perplexities(protocol, scores)})


if __name__ == "__main__":
    main()

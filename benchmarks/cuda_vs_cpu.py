"""The calibration pipeline on CUDA against the CPU: a tiny random-init Llama (4 blocks, hidden 256)
with a real tokenizer, quantized with --device cpu and --device cuda (GPTQ W4 g32, decoupleQ W2 g32),
each evaluated; prints perplexities, times and the largest relative difference of layer errors.

    python benchmarks/cuda_vs_cpu.py [--tokenizer DIR]

--tokenizer: a folder with tokenizer.json (default: the bundled model's). On a GPU machine without the
bundled package, copy its tokenizer files along.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

RUNS = (("gptq", 4, 32), ("decoupleq", 2, 32))


def edgeq(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True, text=True)


def tiny_model(folder: Path, tokenizer) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=640, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def quantize_and_eval(model: Path, out: Path, method: str, bits: int, group: int, device: str):
    start = time.perf_counter()
    done = edgeq("quantize", model, "--method", method, "--bits", bits, "--group-size", group, "--samples", 16,
                 "--seq-len", 256, "--device", device, "--out", out, "--quiet")
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{method} on {device} failed:\n{done.stderr[-2000:]}")
    result = out.with_suffix(".json")
    edgeq("eval", out, "--seq-len", 256, "--max-windows", 8, "--quiet", "--json", result)
    errors = json.loads((out / "quantization.json").read_text())["layer_errors"]
    return json.loads(result.read_text())["perplexity"], errors, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="folder with tokenizer.json (default: the bundled model's)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this benchmark compares the CUDA path with the CPU one")
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from edgeq.io import models
        tokenizer = models.load_tokenizer(models.bundled_source())
    work = Path(tempfile.mkdtemp())
    try:
        model = tiny_model(work / "tiny", tokenizer)
        for method, bits, group in RUNS:
            results = {device: quantize_and_eval(model, work / f"{method}-{device}", method, bits, group, device)
                       for device in ("cpu", "cuda")}
            (ppl_cpu, err_cpu, s_cpu), (ppl_gpu, err_gpu, s_gpu) = results["cpu"], results["cuda"]
            worst = max(abs(err_cpu[k] - err_gpu[k]) / max(err_cpu[k], 1e-12) for k in err_cpu)
            print(f"{method} W{bits} g{group}: perplexity cpu {ppl_cpu:.1f} cuda {ppl_gpu:.1f}; seconds cpu "
                  f"{s_cpu:.1f} cuda {s_gpu:.1f}; largest relative layer-error difference {worst:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

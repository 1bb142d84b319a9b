"""The speed anchor: llama.cpp (through llama-cpp-python) on the bundled GGUF itself (Q4_1, the very
weights edgeq starts from) and on Q4_0 / Q4_K_M made from it by llama.cpp's own quantizer, against edgeq
exports, in one interleaved run: prefill of the same random prompt, then greedy decode with a growing
cache, every model one run per round (edgeq's bench loop and report).

    pip install llama-cpp-python        # a benchmark dependency only; built from its source package
    # On a VM whose CPU advertises AMX without the OS enabling it (this one), the default build
    # (GGML_NATIVE=ON compiles ggml's AMX kernels) dies with SIGSEGV at its first matmul (ldtilecfg in
    # ggml_backend_amx_mul_mat). Build for the ISA without AMX instead:
    #   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
    #   -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON" pip install llama-cpp-python
    python benchmarks/vs_llamacpp.py W4_DIR [W4_HEAD4_DIR ...] --threads 2 [--runs 10] [--json out.json]

Q4_0 and Q4_K_M are re-quantized from Q4_1 (llama.cpp allows it with allow_requantize): their speed is
theirs, their quality is not what an F16 source would give. Without llama_cpp installed the script says
so and exits 0 (nothing to compare).
"""
import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgeq.io import models
from edgeq.runtime import bench, report
from edgeq.runtime.session import use_shared_thread_pool

ROOT = Path(__file__).resolve().parents[1]
REQUANTIZED = {"Q4_0": 2, "Q4_K_M": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* values


class LlamaCppDecoder:
    """llama.cpp as a bench decoder: it owns its loop (bench.one_run calls timed_run)."""

    def __init__(self, path: Path, threads: int, context: int):
        import llama_cpp
        self.llm = llama_cpp.Llama(str(path), n_threads=threads, n_threads_batch=threads, n_ctx=context,
                                   n_batch=context, verbose=False)
        self.vocab_size = self.llm.n_vocab()

    def timed_run(self, prompt: np.ndarray, gen: int, clock) -> tuple[float, list[float]]:
        self.llm.reset()
        start = clock()
        self.llm.eval([int(t) for t in prompt[0]])
        prefill = clock() - start
        steps = []
        for _ in range(gen):
            start = clock()
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            self.llm.eval([token])
            steps.append(clock() - start)
        return prefill, steps


def requantize(source: Path, kind: str, out_dir: Path) -> Path:
    """The bundled GGUF re-quantized by llama.cpp to `kind` (cached in out_dir)."""
    import llama_cpp
    out = out_dir / f"{source.stem}-{kind}.gguf"
    if not out.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = REQUANTIZED[kind]
        params.allow_requantize = True
        if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
            raise SystemExit(f"llama.cpp could not quantize {source} to {kind}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="edgeq export folders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--requantize", nargs="*", default=list(REQUANTIZED), choices=list(REQUANTIZED))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "llamacpp")
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed (pip install llama-cpp-python): nothing to compare")
        return 0
    source = models.bundled_source()
    gguf = source.folder / source.gguf_file
    ggufs = [("llama.cpp Q4_1 (bundled)", gguf)] + [(f"llama.cpp {k}", requantize(gguf, k, args.work))
                                                    for k in args.requantize]
    settings = bench.Settings(threads=args.threads, prompt=args.prompt, gen=args.gen, runs=args.runs,
                              warmup=args.warmup)
    use_shared_thread_pool(args.threads)
    context = args.prompt + args.gen + 8
    loaded = [bench.timed_load(label, path, lambda p=path: LlamaCppDecoder(p, args.threads, context), time.perf_counter)
              for label, path in ggufs]
    loaded += [bench.load(folder, settings, time.perf_counter) for folder in args.folders]
    bench.measure(loaded, settings, progress=lambda done, total: print(f"round {done}/{total}", file=sys.stderr,
                                                                       flush=True))
    results = [bench.result(m, settings) for m in loaded]
    full = report.report(results, {**vars(settings), "engine": "llama.cpp + ort"}, bench.rss_mb())
    print(report.table([("", full)]))
    if args.json_out:
        args.json_out.write_text(json.dumps(full, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The parsers of `edgeq eval | export | bench | generate` and what every command's parser shares (quantize's flags
are in quantize_flags.py). Torch-free, so that a device's runtime install runs bench, generate and eval of an
exported folder."""
from __future__ import annotations

import argparse

from ..util.argtypes import positive_int, slice_arg, windows_arg
from ..quant.layout import HEAD_WIDTHS
from ..evaluation.heldout import EVAL_SEQ_LEN, EVAL_WINDOWS
from ..runtime.bench import ENGINES

QUANTIZE_HELP = "quantize a model into a checkpoint folder"


EPILOG_EVAL = """examples:
  edgeq eval                          # fp32 bundled model on the packaged held-out text (Persuasion)
  edgeq eval smollm2-w4 --text held_out.txt --seq-len 512
  edgeq eval smollm2-w4 --text news.txt novel.txt     # two kinds of text, the model loaded once
Never evaluate on the text you calibrated on."""

EPILOG_EXPORT = """examples:
  edgeq export smollm2-w4 --out smollm2-w4-onnx                # int4 MatMulNBits, accuracy level 4
  edgeq export --fp32 --out smollm2-fp32-onnx                  # the float baseline, same exporter
  edgeq export smollm2-w4 --out w4-mobile --lm-head 8 --ort-format
  edgeq export mq --bits 4 --out mq-int4-onnx                  # one width of a matquant checkpoint
  edgeq export smollm2-w4 --format gptq --out smollm2-w4-gptq  # for transformers, vLLM, SGLang
  edgeq export smollm2-w4-g32 --format gguf --out smollm2.gguf # for llama.cpp (W4/W8 g32: Q4_0, Q4_1, Q8_0)
Every export is checked (onnx.checker, an onnxruntime session, logits against torch) before the folder
appears. onnxruntime runs 2, 4 and 8 bits; 3-bit codes are stored in the 4-bit container."""

EPILOG_BENCH = """examples:
  edgeq bench fp32-onnx w4-onnx w2-onnx --threads 2 --json laptop.json --plot laptop.png
  edgeq bench w4-onnx --provider xnnpack --threads 4 --json phone.json       # on the device
  edgeq bench compare laptop.json phone.json --plot devices.png
  edgeq bench mq-onnx mq-onnx@4 mq-onnx@2 mq-onnx@3.5  # one int8 matquant export, sliced at load (3.5: a
                                                      # width per layer, 3.5 bits on average)
Each run prefills the prompt, then decodes --gen tokens greedily with a growing KV cache; runs of the
models alternate (A B A B ...) so the ratios survive a noisy device. Needs only numpy and onnxruntime:
pip install edgeq (the [quantize] extra is for quantizing and exporting)."""

class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line and a pointer to --help, as every other refusal is; argparse's default
    prints the whole usage block (18 lines for quantize) before it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


MODEL_HELP = ("Hugging Face folder (safetensors, fp32/bf16/fp16, sharded or not), .gguf file, or Hub id "
              "(owner/name[@revision]: fetched into the Hugging Face cache; HF_HOME, HF_TOKEN and HF_HUB_OFFLINE "
              "apply)")

def add_revision_flag(parser) -> None:
    parser.add_argument("--revision", help="branch, tag or commit of a Hub id (same as owner/name@REVISION)")

def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="perplexity of a model or checkpoint on held-out text",
                       epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", nargs="?", help=f"checkpoint folder, exported ONNX folder (run by onnxruntime), or a "
                   f"{MODEL_HELP} (default: bundled SmolLM2-135M at fp32)")
    add_revision_flag(e)
    e.add_argument("--text", nargs="+", help="held-out text file(s), each reported on its own line (default: "
                   "packaged Persuasion); with several, --json writes a list of results, one per text")
    e.add_argument("--seq-len", type=positive_int, default=EVAL_SEQ_LEN,
                   help=f"tokens per window (default: {EVAL_SEQ_LEN})")
    e.add_argument("--max-windows", type=windows_arg, default=EVAL_WINDOWS, metavar="N|all",
                   help=f"evaluate the first N windows of each text, or all of them (default: {EVAL_WINDOWS}: enough "
                   "for a stable ratio between two models, a fraction of the time; compare models on the same N)")
    e.add_argument("--bits", type=slice_arg, help=f"evaluate this slice of the codes (a matquant checkpoint, or an "
                   f"exported 8-bit folder sliced in memory); {MIXNMATCH_HELP}")
    e.add_argument("--json", dest="json_out", help="also write the result as JSON to this file")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

MIXNMATCH_HELP = ("a number with a decimal point is an average (Mix'n'Match): --bits 3.5 gives each layer group the "
                  "width, from those the codes serve, that meets 3.5 code bits per weight at the least estimated loss")

EXPORT_FORMATS = ("onnx", "gptq", "gguf")


def add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="ONNX decoder with KV cache; quantized linears as MatMulNBits",
                       epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("model", nargs="?", help=f"edgeq checkpoint (or, with --fp32, a {MODEL_HELP}; default bundled)")
    add_revision_flag(x)
    x.add_argument("--out", required=True, help="folder to create (must not exist or be empty); with --format "
                   "gguf, the .gguf file to create")
    x.add_argument("--format", choices=EXPORT_FORMATS, default="onnx",
                   help="onnx: the decoder onnxruntime and onnxruntime-genai run (default); gptq: a Hugging Face "
                   "folder in the GPTQ format (transformers, vLLM, SGLang, genai's builder load it; docs/export.md); gguf: "
                   "one file llama.cpp runs, for 4-bit and 8-bit grids in groups of 32 (Q4_0, Q4_1, Q8_0)")
    x.add_argument("--gguf-base", help="--format gguf: a GGUF of the same float model, whose tokenizer and "
                   "hyperparameters the file copies (default: the bundled model's, for checkpoints made from it)")
    x.add_argument("--fp32", action="store_true", help="export the float model: the size/latency baseline")
    x.add_argument("--accuracy-level", type=int, choices=range(5),
                   help="MatMulNBits compute: 4 = int8 activations, the fast CPU path (default); 0 = fp32")
    x.add_argument("--lm-head", choices=list(HEAD_WIDTHS),
                   help="output head: float (a tied head reads the embedding table), 8-bit or 4-bit round-to-"
                        "nearest (a tied embedding then shares the codes: 4x or 8x smaller; 8 costs ~0.1%% "
                        "perplexity on SmolLM2 and saves 45%% of the folder). Default: the checkpoint's own head "
                        "if it was quantized with the model (quantize --lm-head), else float")
    x.add_argument("--ort-format", action="store_true", help="also write model.ort for ORT Mobile")
    x.add_argument("--bits", type=slice_arg, help="export this slice of the checkpoint's codes (matquant: 8, 4 "
                   f"or 2; default: the stored width, which a device can still slice, see examples/); {MIXNMATCH_HELP}")

def add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="latency of exported folders on this device (onnxruntime only, no torch)",
                       epilog=EPILOG_BENCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("models", nargs="+", metavar="MODEL_DIR",
                   help="exported folders, measured interleaved; the first is the baseline of the ratios "
                        "(or: compare A.json B.json ...)")
    b.add_argument("--provider", default="cpu", help="cpu, cuda, xnnpack, coreml, nnapi, qnn, dml or auto "
                   "(default: cpu); one this onnxruntime lacks is refused, never replaced by the CPU")
    b.add_argument("--threads", type=positive_int, help="intra-op threads (default: onnxruntime's, all cores)")
    b.add_argument("--prompt", type=positive_int, default=128, help="prompt tokens for prefill (default: 128)")
    b.add_argument("--gen", type=positive_int, default=64, help="tokens decoded per run, cache growing (default: 64)")
    b.add_argument("--runs", type=positive_int, default=20, help="measured runs per model (default: 20)")
    b.add_argument("--warmup", type=int, default=3, help="unmeasured runs per model first (default: 3)")
    b.add_argument("--optimization", default="all", choices=["disable", "basic", "extended", "all"],
                   help="onnxruntime graph optimisation level (default: all)")
    b.add_argument("--ort-format", action="store_true", help="run model.ort instead of model.onnx")
    b.add_argument("--save-optimized", metavar="DIR", help="write each model's optimised graph to DIR")
    b.add_argument("--provider-option", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the provider (repeatable), e.g. device_id=0")
    b.add_argument("--per-session-pools", action="store_true",
                   help="give each model its own thread pool (default: one shared pool; separate pools keep "
                        "spinning after a run and slow the next model's first tokens)")
    b.add_argument("--engine", default="ort", choices=ENGINES,
                   help="ort: edgeq's loop on an onnxruntime session (default); genai: onnxruntime-genai's own "
                        "generator on the folder's genai_config.json, what an app embedding genai sees")
    b.add_argument("--json", dest="json_out", help="write the report (with machine info and samples) here")
    b.add_argument("--plot", help="PNG of the decode latency distributions (needs matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress line")

def add_generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="greedy text generation from an exported folder (onnxruntime)")
    g.add_argument("model", help="exported ONNX folder")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=positive_int, default=32)
    g.add_argument("--threads", type=positive_int, help="onnxruntime intra-op threads")
    g.add_argument("--bits", type=slice_arg, help=f"slice an exported 8-bit (matquant) model to this width first; "
                   f"{MIXNMATCH_HELP}")

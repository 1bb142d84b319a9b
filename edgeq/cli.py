"""`edgeq quantize | eval | export | generate | bench`: the command line. Every refusal is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .calib.sources import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, SENSITIVITY_SAMPLES
from .errors import EdgeqError
from .mixnmatch import parse_slice
from .nesting import DEFAULT_WIDTHS, default_weights
from .export import HEAD_WIDTHS
from .hub import with_revision
from .paths import check_writable_file
from .runtime.bench import ENGINES


EPILOG_QUANTIZE = """examples:
  edgeq quantize --out smollm2-w4                      # GPTQ W4 g128 of the bundled SmolLM2-135M
  edgeq quantize --method rtn --bits 3 --out w3-rtn    # round to nearest, no calibration needed
  edgeq quantize path/to/hf-folder --bits 2 --group-size 64 --calib my.txt --out w2
  edgeq quantize --group-size channel --out w4-pc      # one scale per output row
  edgeq quantize --method decoupleq --bits 2 --group-size 64 --out w2-dq
  edgeq quantize --method matquant --widths 8,4,2 --out mq      # one int8 checkpoint, sliceable to 4 and 2
  edgeq quantize --method signround --bits 3 --out w3-sr  # learned rounding, trained block by block
  edgeq quantize --method flexround --steps 500 --out w4-fr     # longer training, closer to the paper
  edgeq quantize --mixed --budget 3.0 --out mixed-3bit  # 2/4/8 bits per layer, 3.0 code bits on average
  edgeq quantize --budget 3.5 --sensitivity-from mixed-3bit --out mixed-3.5bit  # reuse the estimates

Note: the bundled model's weights were stored as Q4_1 (blocks of 32), so asymmetric 4-bit with group 32
is nearly lossless by construction; compare methods at group 64/128, per-channel, 3 and 2 bits.
An interrupted run keeps OUT.partial and resumes from the last finished block when run again."""

EPILOG_EVAL = """examples:
  edgeq eval                          # fp32 bundled model on the packaged held-out text (Persuasion)
  edgeq eval smollm2-w4 --text held_out.txt --seq-len 512
  edgeq eval smollm2-w4 --text news.txt novel.txt     # two kinds of text, the model loaded once
Never evaluate on the text you calibrated on."""


def group_size_arg(value: str) -> int:
    if value.lower() in ("channel", "per-channel", "-1"):
        return -1
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a power of two >= 16 or 'channel', got {value!r}") from None


def bits_arg(value: str) -> int:
    try:
        bits = int(value)
    except ValueError:
        bits = 0
    if not 2 <= bits <= 8:
        raise argparse.ArgumentTypeError(f"bits must be an integer from 2 to 8, got {value!r}")
    return bits


def slice_arg(value: str) -> int | float:
    """A width of a nested model's codes ('4') or, with a decimal point, an average ('3.5': Mix'n'Match)."""
    try:
        bits = parse_slice(value)
    except EdgeqError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not 2 <= bits <= 8:
        raise argparse.ArgumentTypeError(f"bits must be from 2 to 8, got {value!r}")
    return bits


def widths_arg(value: str) -> list[int]:
    try:
        widths = [int(v) for v in value.split(",")]
    except ValueError:
        widths = []
    if not widths or len(set(widths)) != len(widths) or not all(2 <= b <= 8 for b in widths):
        raise argparse.ArgumentTypeError(f"expected distinct widths from 2 to 8 like 8,4,2, got {value!r}")
    return widths


def finite_float(value: str) -> float:
    """A float that is a number: argparse's float takes 'nan' and 'inf', which then fail deep in the work."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def weights_arg(value: str) -> list[float]:
    try:
        weights = [finite_float(v) for v in value.split(",")]
    except argparse.ArgumentTypeError:
        weights = []
    if not weights or min(weights) < 0 or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(f"expected non-negative weights like 1,1,1 (not all 0), got {value!r}")
    return weights


def candidates_arg(value: str) -> list[tuple[int, int]]:
    """'2:64,4,8:channel' -> [(2, 64), (4, 128), (8, -1)]; a width without a group gets 128."""
    out = []
    for part in value.split(","):
        bits, _, group = part.partition(":")
        try:
            out.append((bits_arg(bits), group_size_arg(group) if group else 128))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected BITS[:GROUP] pairs like 2:64,4:128,8:128, got {value!r}") \
                from None
    return out


def layer_grid_arg(value: str) -> tuple[str, int, int]:
    pattern, sep, grid_text = value.partition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=BITS[:GROUP] like down_proj=4:128, got {value!r}")
    (bits, group), = candidates_arg(grid_text)
    return pattern, bits, group


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


# edgeq eval's default window count. benchmarks/eval_windows.py (README): on the packaged Persuasion, the first
# 40 windows put RTN and GPTQ W4 g128 within 0.34% of their ratio to fp32 over all 226 windows.
EVAL_WINDOWS = 40


def windows_arg(value: str) -> int | None:
    """A positive window count, or 'all' (None: every window)."""
    return None if value.lower() == "all" else positive_int(value)


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line and a pointer to --help, as every other refusal is; argparse's default
    prints the whole usage block (18 lines for quantize) before it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Flags that set a method's options: option name (a field of the methods' options, solvers/__init__.py) ->
# (flag, argparse keywords). A flag applies to exactly the methods whose options have that name; the help lists
# them with their defaults, read from the records, and giving the flag to another method is refused.
OPTION_FLAGS = {
    "clip": ("--clip", dict(choices=["minmax", "mse"], help="range of each group: min-max, or a search over "
                            "shrunk ranges for the least (Hessian-weighted, when calibrated) squared error")),
    "act_order": ("--no-act-order", dict(action="store_const", const=False, help="sweep columns in natural order "
                                         "(default: by descending Hessian diagonal, with static groups: no g_idx)")),
    "damp": ("--damp", dict(type=finite_float, help="damping, a fraction of the mean Hessian diagonal")),
    "iters": ("--iters", dict(type=positive_int, help="outer iterations (1 = its GPTQ start only)")),
    "passes": ("--passes", dict(type=finite_float, help="greedy coordinate moves per row, in units of the row's length")),
    "refits": ("--refits", dict(type=int, help="rounds of least-squares scales for the codes, each followed by "
                                "another descent")),
    "descent_damp": ("--descent-damp", dict(type=finite_float, help="descend on H + this x mean(diag H) x I (a pull "
                                            "towards the plain weight error)")),
    "widths": ("--widths", dict(type=widths_arg, help="the widths the codes serve, the widest stored")),
    "weights": ("--weights", dict(type=weights_arg, help="weight of each width's error, in --widths order "
                                  f"(for {','.join(map(str, DEFAULT_WIDTHS))}: "
                                  f"{','.join(f'{w:g}' for w in default_weights(DEFAULT_WIDTHS))}; else all 1)")),
    "steps": ("--steps", dict(type=positive_int, help="training steps per block, each on --batch-size windows")),
    "lr": ("--lr", dict(type=finite_float, help="learning rate, decayed to 0 over the steps (unset: 1/steps)")),
    "rank": ("--rank", dict(type=positive_int, help="rank of the per-weight scales (unset: a quarter of the "
                            "layer's smaller dimension)")),
    "rule": ("--rounding-rule", dict(choices=["division", "addition"], help="W / scale (the method) or "
                                     "W / s1 + offset (the paper's ablation, same engine)")),
}


def option_help(option: str, text: str) -> str:
    """'METHODS: text (default: ...)', the methods and their defaults read from the method records."""
    from .solvers import get_method, methods_with_option
    names = methods_with_option(option)
    defaults = {name: getattr(get_method(name).options(), option) for name in names}
    shown = {name: v for name, v in defaults.items() if v is not None and not isinstance(v, bool)}
    values = {_shown_value(v) for v in shown.values()}
    if len(values) == 1 and len(shown) == len(names):
        default = f" (default: {values.pop()})"
    else:
        default = f" (default: {', '.join(f'{n} {_shown_value(v)}' for n, v in shown.items())})" if shown else ""
    return f"{', '.join(names)}: {text}{default}"


def _shown_value(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = OneLineParser(prog="edgeq", description="Quantize LLM weights on a CPU for edge "
                                     "deployment (ONNX MatMulNBits), and measure what it costs.")
    parser.add_argument("--version", action="version", version=f"edgeq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    add_quantize_parser(sub)
    add_eval_parser(sub)
    add_export_parser(sub)
    add_bench_parser(sub)
    add_generate_parser(sub)
    return parser


def add_quantize_parser(sub) -> None:
    from .solvers import get_method, method_names
    from .solvers.method import BLOCK_LOSSES, DEFAULT_BLOCK_LOSS
    q = sub.add_parser("quantize", help="quantize a model into a checkpoint folder",
                       epilog=EPILOG_QUANTIZE, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("model", nargs="?", help=f"{MODEL_HELP} (default: bundled SmolLM2-135M)")
    add_revision_flag(q)
    q.add_argument("--out", required=True, help="checkpoint folder to create (must not exist or be empty)")
    q.add_argument("--method", default="gptq", choices=method_names(), metavar="METHOD",
                   help="; ".join(f"{name}: {get_method(name).summary}" for name in method_names()) +
                   " (default: gptq; README's method table says which to use for which width)")
    q.add_argument("--bits", type=bits_arg, help="bits per weight, 2..8 (default: 4; a nested method: the widest "
                   "of --widths)")
    q.add_argument("--group-size", type=group_size_arg, default=128,
                   help="weights sharing a scale along the input dim: power of two >= 16, or 'channel' "
                   "(default: 128)")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=False,
                     help="symmetric grid, zero point 2^(bits-1)")
    sym.add_argument("--asym", dest="sym", action="store_false",
                     help="asymmetric grid (default; nested methods keep zero points on multiples of "
                     "2^(8-narrowest), so every slice has an integer one)")
    q.add_argument("--lm-head", default="fp", choices=list(HEAD_WIDTHS),
                   help="output head: float (default), or 8 or 4 bits solved on its own Hessian (the final norm's "
                        "outputs on the calibration text) by the method's solver, GPTQ for the learned and nested "
                        "methods; a tied embedding then reads the same codes, stored once")
    add_calibration_flags(q)
    options = q.add_argument_group("method options (each applies to the methods it names)")
    for option, (flag, keywords) in OPTION_FLAGS.items():
        options.add_argument(flag, dest=option, default=None, **{**keywords, "help": option_help(option,
                                                                                                 keywords["help"])})
    q.add_argument("--block-epochs", type=int, default=0,
                   help="layer-wise methods with calibration: after each block is solved, train its scales "
                   "(codes frozen) for N epochs to match the float block's outputs (decoupleQ's stage 2; a nested "
                   "method one pass per width; default: 0, off)")
    q.add_argument("--block-lr", type=finite_float, default=5e-3,
                   help="Adam learning rate of that training, on log(scale) (default: 5e-3)")
    q.add_argument("--block-loss", choices=BLOCK_LOSSES, default=None,
                   help="the block output error that block training (learned methods, --block-epochs) lowers: "
                   "mse (AutoRound's and FlexRound's) or relative (each token's error over its norm, so that "
                   "the attention sink's huge hidden state does not outweigh every other token; default: "
                   f"{DEFAULT_BLOCK_LOSS['learned']} for learned methods, {DEFAULT_BLOCK_LOSS['layer']} for "
                   "--block-epochs, the better of the two in the method table)")
    add_mixed_flags(q)
    q.add_argument("--layer-grid", action="append", type=layer_grid_arg, default=[], metavar="PATTERN=BITS[:GROUP]",
                   help="a grid by hand for every linear whose name contains PATTERN, e.g. down_proj=4:128 "
                   "(repeatable; the later wins; the others keep --bits/--group-size)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")


def add_calibration_flags(q) -> None:
    q.add_argument("--calib", nargs="+", metavar="PART", help="calibration text, one or more parts: a text or "
                   ".jsonl file ('text' per line, or chat 'messages' rendered with the model's template), a "
                   "folder, a glob, builtin:novel|pydoc|code|chat, or self (sampled from the model itself, "
                   "cached) (default: builtin:novel, the packaged Pride and Prejudice)")
    q.add_argument("--calib-mix", type=weights_arg, metavar="W1,W2,...", help="the share of the calibration "
                   "windows each --calib part gets, e.g. 2,1,1 (default: equal)")
    q.add_argument("--samples", type=positive_int, default=DEFAULT_SAMPLES,
                   help=f"calibration windows (default: {DEFAULT_SAMPLES})")
    q.add_argument("--seq-len", type=positive_int, default=DEFAULT_SEQ_LEN,
                   help=f"tokens per calibration window (default: {DEFAULT_SEQ_LEN}: at the same tokens, more and "
                   "shorter windows measured better on held-out text of another kind, see README)")
    q.add_argument("--batch-size", type=positive_int, default=2,
                   help="windows per forward; small keeps activations small (default: 2)")
    q.add_argument("--propagate", choices=["quantized", "float"], default="quantized",
                   help="what the next block calibrates on: the outputs of this block with its quantized weights "
                   "(GPTQ's sequential scheme, default) or with its float weights (one forward pass less)")
    q.add_argument("--first-token-weight", type=finite_float, default=1.0, metavar="W",
                   help="how many times each calibration window's first position (the attention sink, whose keys "
                   "and values every later token reads) counts in the Hessians (default: 1, as GPTQ)")
    q.add_argument("--seed", type=int, default=0, help="seed of the calibration window sampling")
    q.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to calibrate")


def add_mixed_flags(q) -> None:
    m = q.add_argument_group("mixed precision (a width per linear, chosen to fit a size budget)")
    m.add_argument("--mixed", action="store_true", help="quantize with a width per linear; needs --budget")
    m.add_argument("--budget", help="average code bits per quantized weight (e.g. 3.0), or the megabytes of "
                   "the MatMulNBits weights onnxruntime stores (e.g. 30MB); implies --mixed")
    m.add_argument("--candidates", type=candidates_arg, help="the grids a layer may get, BITS[:GROUP] "
                   "(default: 2:64,4:128,8:128, the widths onnxruntime runs fast)")
    m.add_argument("--sensitivity", choices=["fisher", "hessian"], default="fisher",
                   help="what a width costs a layer: fisher = 1/2 sum F dW^2, the loss change (default; one "
                   "backward pass per window through the whole model), hessian = the layer's own output error")
    m.add_argument("--sensitivity-samples", type=positive_int, default=SENSITIVITY_SAMPLES,
                   help=f"calibration windows for the estimates (default: {SENSITIVITY_SAMPLES})")
    m.add_argument("--sensitivity-from", metavar="CKPT", help="reuse the estimates stored in an earlier mixed "
                   "checkpoint (or its quantization.json; made for the same --candidates) instead of measuring them again")


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
    e.add_argument("--seq-len", type=positive_int, default=512, help="tokens per window (default: 512)")
    e.add_argument("--max-windows", type=windows_arg, default=EVAL_WINDOWS, metavar="N|all",
                   help=f"evaluate the first N windows of each text, or all of them (default: {EVAL_WINDOWS}: enough "
                   "for a stable ratio between two models, a fraction of the time; compare models on the same N)")
    e.add_argument("--bits", type=slice_arg, help=f"evaluate this slice of the codes (a matquant checkpoint, or an "
                   f"exported 8-bit folder sliced in memory); {MIXNMATCH_HELP}")
    e.add_argument("--json", dest="json_out", help="also write the result as JSON to this file")
    e.add_argument("--quiet", action="store_true", help="no progress bars")


MIXNMATCH_HELP = ("a number with a decimal point is an average (Mix'n'Match): --bits 3.5 gives each layer group the "
                  "width, from those the codes serve, that meets 3.5 code bits per weight at the least estimated loss")


def add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="ONNX decoder with KV cache; quantized linears as MatMulNBits",
                       epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("model", nargs="?", help=f"edgeq checkpoint (or, with --fp32, a {MODEL_HELP}; default bundled)")
    add_revision_flag(x)
    x.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    x.add_argument("--fp32", action="store_true", help="export the float model: the size/latency baseline")
    x.add_argument("--accuracy-level", type=int, default=4, choices=range(5),
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


EPILOG_EXPORT = """examples:
  edgeq export smollm2-w4 --out smollm2-w4-onnx                # int4 MatMulNBits, accuracy level 4
  edgeq export --fp32 --out smollm2-fp32-onnx                  # the float baseline, same exporter
  edgeq export smollm2-w4 --out w4-mobile --lm-head 8 --ort-format
  edgeq export mq --bits 4 --out mq-int4-onnx                  # one width of a matquant checkpoint
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


def method_flag_conflict(args) -> str | None:
    """A flag that the chosen method would silently ignore is a mistake worth one clear line. (The refusals
    that the API shares, such as a nested method's --bits, are QuantConfig.validate()'s.)"""
    from .solvers import get_method, methods_with_option
    method = get_method(args.method)
    for option, (flag, _) in OPTION_FLAGS.items():
        if getattr(args, option) is not None and option not in method.option_names:
            return f"{flag} does not apply to {args.method}; it applies to {', '.join(methods_with_option(option))}"
    mixed = args.mixed or args.budget is not None
    if mixed and args.budget is None:
        return "--mixed needs --budget: average bits per weight (3.0) or megabytes (30MB)"
    if not mixed and (args.candidates or args.sensitivity_from):
        return "--candidates and --sensitivity-from apply to mixed precision: add --budget"
    if mixed and args.layer_grid:
        return "--layer-grid sets widths by hand; --budget chooses them: use one of the two"
    if mixed and args.bits is not None:
        return "with --budget the widths come from --candidates; drop --bits"
    return None


def cmd_quantize(args) -> None:
    from .api import QuantConfig, quantize
    from .solvers import get_method
    conflict = method_flag_conflict(args)
    if conflict:
        raise EdgeqError(conflict)
    method = get_method(args.method)
    opts = {option: getattr(args, option) for option in OPTION_FLAGS if getattr(args, option) is not None}
    bits = args.bits if args.bits is not None else max(method.resolve(opts).widths) if method.nested else 4
    config = QuantConfig(method=args.method, bits=bits, group_size=args.group_size, sym=args.sym,
                         samples=args.samples, seq_len=args.seq_len, batch_size=args.batch_size,
                         seed=args.seed, device=args.device, solver_opts=opts, block_epochs=args.block_epochs,
                         block_lr=args.block_lr, propagate=args.propagate,
                         first_token_weight=args.first_token_weight, block_loss=args.block_loss, mixed=mixed_config(args),
                         layer_grids=tuple(args.layer_grid), lm_head=HEAD_WIDTHS[args.lm_head])
    meta = quantize(with_revision(args.model, args.revision), args.out, config, calib=args.calib, progress=not args.quiet, calib_mix=args.calib_mix)
    s = meta["stats"]
    if meta.get("mixed"):
        from .mixed import table
        print(table(meta["mixed"]))
    grid_text = "mixed" if meta.get("mixed") else f"W{meta['bits']} g{meta['group_size']}" + \
        "".join(f", {p}: W{b} g{g}" for p, b, g in meta.get("layer_grids", []))
    print(f"wrote {args.out}: {meta['method']} {grid_text} {'sym' if meta['sym'] else 'asym'}, "
          f"{len(meta['layers'])} linears")
    sensitivity = f", sensitivity {s['seconds_sensitivity']:.1f}" if meta.get("mixed") else ""
    print(f"time {s['seconds_load'] + s['seconds_sensitivity'] + s['seconds_quantize']:.1f}s (load "
          f"{s['seconds_load']:.1f}{sensitivity}, forward "
          f"{s['seconds_forward']:.1f}, hessian {s['seconds_hessian']:.1f}, solver {s['seconds_solver']:.1f}"
          f"{', block training %.1f' % s['seconds_block_training'] if s['seconds_block_training'] else ''}); "
          f"peak RSS {s['peak_rss_mb']:.0f} MB ({s['peak_rss_mb'] / s['fp32_parameter_mb']:.2f}x the fp32 "
          f"parameters)")


def mixed_config(args):
    if args.budget is None:
        return None
    from .mixed import DEFAULT_CANDIDATES, MixedPrecision, parse_budget
    budget, unit = parse_budget(args.budget)
    return MixedPrecision(budget, unit, tuple(args.candidates or DEFAULT_CANDIDATES), args.sensitivity,
                          args.sensitivity_samples, args.sensitivity_from)


def cmd_eval(args) -> None:
    from .heldout import evaluate_texts
    if args.json_out:
        check_writable_file(args.json_out, "--json")
    results = evaluate_texts(with_revision(args.model, args.revision), args.text or [None], args.seq_len, args.max_windows,
                             progress=not args.quiet, bits=args.bits)
    for result in results:
        print(f"perplexity {result['perplexity']:.3f}  ({result['model']}; {result['text']}; "
              f"{result['windows']} windows x {result['seq_len']} tokens)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results[0] if len(results) == 1 else results, f, indent=2)


def cmd_export(args) -> None:
    from .export.onnx import export
    r = export(with_revision(args.model, args.revision), args.out, fp32=args.fp32, accuracy_level=args.accuracy_level, lm_head=args.lm_head,
               ort_format=args.ort_format, bits=args.bits)
    size = sum(r["bytes"].values()) / 2 ** 20
    print(f"wrote {args.out}: {r['matmulnbits_nodes']} MatMulNBits nodes, {size:.1f} MB, accuracy level "
          f"{r['accuracy_level']}, logits vs torch: relative error {r['parity_relative_logit_error']:.1e} "
          f"(weights checked at level 0: {r['parity_relative_logit_error_level_0']:.1e})")
    three = sorted({v["stored_bits"] for v in r["layers"].values() if v["stored_bits"] == 3})
    if three:
        print("note: 3-bit codes are stored in the 4-bit MatMulNBits container (onnxruntime has no 3-bit kernel)")


def provider_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EdgeqError(f"--provider-option takes KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def cmd_bench(args) -> None:
    from dataclasses import asdict

    from .memory import peak_rss_mb
    from .runtime import bench, report
    if args.models[0] == "compare":
        return cmd_bench_compare(args.models[1:], args.plot)
    settings = bench.Settings(provider=args.provider, threads=args.threads, prompt=args.prompt, gen=args.gen,
                              runs=args.runs, warmup=args.warmup, optimization=args.optimization,
                              ort_format=args.ort_format, save_optimized=args.save_optimized,
                              provider_options=provider_options(args.provider_option),
                              shared_pool=not args.per_session_pools, engine=args.engine)
    if args.warmup < 0:
        raise EdgeqError("--warmup must be >= 0")
    for path, flag in ((args.json_out, "--json"), (args.plot, "--plot")):
        if path:
            check_writable_file(path, flag)
    progress = None if args.quiet else \
        (lambda done, total: print(f"\rround {done}/{total}", end="" if done < total else "\n", file=sys.stderr))
    models = bench.bench(args.models, settings, progress=progress)
    rep = report.report([bench.result(m, settings) for m in models], asdict(settings), peak_rss_mb())
    here = [(rep["machine"]["cpu"], rep)]
    print(report.table(here))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rep, indent=1) + "\n")
    if args.plot:
        report.plot(here, args.plot)


def cmd_bench_compare(paths: list[str], plot_path: str | None) -> None:
    from .runtime import report
    if not paths:
        raise EdgeqError("compare needs at least one report: edgeq bench compare a.json b.json")
    reports = [(Path(p).stem, report.load_report(p)) for p in paths]
    for label, rep in reports:
        print(f"{label}: {rep['machine']['cpu']}, {rep['machine']['cores']} cores, onnxruntime "
              f"{rep['machine']['onnxruntime']}, provider {rep['settings']['provider']}, "
              f"threads {rep['settings']['threads']}")
    print(report.table(reports))
    if plot_path:
        report.plot(reports, plot_path)


def cmd_generate(args) -> None:
    from .runtime.session import OrtDecoder, check_length
    from .runtime.tokenizer import load_tokenizer
    tokenizer, eos = load_tokenizer(args.model)
    prompt = tokenizer.encode(args.prompt, add_special_tokens=False).ids
    if not prompt:
        raise EdgeqError("the prompt is empty: generation continues a prompt of at least one token")
    check_length(args.model, len(prompt) + args.max_new_tokens,
                 f"a {len(prompt)}-token prompt and {args.max_new_tokens} new tokens")
    decoder = OrtDecoder.from_folder(args.model, args.threads, args.bits)
    ids = decoder.greedy(prompt, args.max_new_tokens, eos)
    print(args.prompt + tokenizer.decode(ids))


QUANTIZE_EXTRA = {"torch", "transformers", "numba", "onnx", "safetensors", "gguf", "accelerate", "tqdm"}
RUNTIME_EXTRA = {"onnx", "tqdm"}  # also in the runtime extra: bench, generate and eval of an exported folder


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):  # the libraries' bars too (transformers' loading, huggingface_hub's
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # downloads): both read this when first imported
    try:
        {"quantize": cmd_quantize, "eval": cmd_eval, "export": cmd_export, "generate": cmd_generate,
         "bench": cmd_bench}[args.command](args)
    except EdgeqError as err:
        print(f"edgeq {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        module = (err.name or "").split(".")[0]
        if module not in QUANTIZE_EXTRA:
            raise
        extra = "runtime" if module in RUNTIME_EXTRA and args.command in ("bench", "generate", "eval") else "quantize"
        print(f"edgeq {args.command}: error: needs {err.name}, part of the {extra} extra: "
              f"pip install 'edgeq[{extra}]'", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permission denied, ... while reading or writing: what and where
        where = f": {err.filename}" if err.filename else ""
        print(f"edgeq {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "; run the same command again to resume" if args.command == "quantize" else ""
        print(f"edgeq {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

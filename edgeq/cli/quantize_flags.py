"""`edgeq quantize`'s flags: QuantConfig's fields (their defaults read from config.py) and the methods' option
flags, generated from the method records (solvers/options.py), and the checks of a flag a method would ignore."""
from __future__ import annotations

import argparse
import dataclasses

from ..util.argtypes import bits_arg, candidates_arg, finite_float, group_size_arg, layer_grid_arg, positive_int, weights_arg
from ..config import CALIB_DTYPES, SENSITIVITY_SAMPLES
from ..config import default_of
from ..errors import EdgeqError
from ..quant.layout import HEAD_WIDTHS
from .parsers import MODEL_HELP, QUANTIZE_HELP, add_revision_flag


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


def option_flags() -> dict:
    """option name -> solvers.options.Flag, from every registered method's options dataclass: a flag applies to
    exactly the methods whose options have that name, and one name has one flag."""
    from ..solvers import get_method, method_names
    from ..solvers.options import flag_of
    flags = {}
    for name in method_names():
        for field in dataclasses.fields(get_method(name).options):
            flag = flag_of(field)
            if flag is not None and flags.setdefault(field.name, flag) != flag:
                raise ValueError(f"option {field.name!r} of {name} declares {flag.flag}; another method "
                                 f"declares {flags[field.name].flag}: one option name, one flag")
    return flags


def option_help(option: str, text: str) -> str:
    """'METHODS: text (default: ...)', the methods and their defaults read from the method records."""
    from ..solvers import get_method, methods_with_option
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


def add_quantize_parser(sub) -> None:
    from ..solvers import get_method, method_names
    from ..solvers.method import BLOCK_LOSSES, DEFAULT_BLOCK_LOSS
    q = sub.add_parser("quantize", help=QUANTIZE_HELP,
                       epilog=EPILOG_QUANTIZE, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("model", nargs="?", help=f"{MODEL_HELP} (default: bundled SmolLM2-135M)")
    add_revision_flag(q)
    q.add_argument("--out", required=True, help="checkpoint folder to create (must not exist or be empty)")
    q.add_argument("--method", default=default_of("method"), choices=method_names(), metavar="METHOD",
                   help="; ".join(f"{name}: {get_method(name).summary}" for name in method_names()) +
                   " (default: " + default_of("method") + "; docs/methods.md says which to use for which width)")
    q.add_argument("--bits", type=bits_arg, help="bits per weight, 2..8 (default: 4; a nested method: the widest "
                   "of --widths)")
    q.add_argument("--group-size", type=group_size_arg, default=default_of("group_size"),
                   help="weights sharing a scale along the input dim: power of two >= 16, or 'channel' "
                   f"(default: {default_of('group_size')})")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=default_of("sym"),
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
    for option, flag in option_flags().items():
        options.add_argument(flag.flag, dest=option, default=None,
                             **{**flag.argparse_keywords(), "help": option_help(option, flag.help)})
    q.add_argument("--block-epochs", type=int, default=default_of("block_epochs"),
                   help="layer-wise methods with calibration: after each block is solved, train its scales "
                   "(codes frozen) for N epochs to match the float block's outputs (decoupleQ's stage 2; a nested "
                   "method one pass per width; default: off)")
    q.add_argument("--block-lr", type=finite_float, default=default_of("block_lr"),
                   help=f"Adam learning rate of that training, on log(scale) (default: {default_of('block_lr'):g})")
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
    add_transform_flag(q)
    q.add_argument("--quiet", action="store_true", help="no progress bars")


def add_transform_flag(q) -> None:
    from ..transforms import TRANSFORMS
    q.add_argument("--transform", action="append", default=[], choices=list(TRANSFORMS), metavar="NAME",
                   help="an exact rewrite of the float model before calibration (repeatable, in order): "
                   + "; ".join(f"{t.name}: {t.help}" for t in TRANSFORMS.values()))

def add_calibration_flags(q) -> None:
    q.add_argument("--calib", nargs="+", metavar="PART", help="calibration text, one or more parts: a text or "
                   ".jsonl file ('text' per line, or chat 'messages' rendered with the model's template), a "
                   "folder, a glob, builtin:novel|pydoc|code|chat, or self (sampled from the model itself, "
                   "cached) (default: builtin:novel, the packaged Pride and Prejudice)")
    q.add_argument("--calib-mix", type=weights_arg, metavar="W1,W2,...", help="the share of the calibration "
                   "windows each --calib part gets, e.g. 2,1,1 (default: equal)")
    q.add_argument("--samples", type=positive_int, default=default_of("samples"),
                   help=f"calibration windows (default: {default_of('samples')})")
    q.add_argument("--seq-len", type=positive_int, default=default_of("seq_len"),
                   help=f"tokens per calibration window (default: {default_of('seq_len')}: at the same tokens, more and "
                   "shorter windows measured better on held-out text of another kind, see README)")
    q.add_argument("--batch-size", type=positive_int, default=default_of("batch_size"),
                   help=f"windows per forward; small keeps activations small (default: {default_of('batch_size')})")
    q.add_argument("--propagate", choices=["quantized", "float"], default=default_of("propagate"),
                   help="what the next block calibrates on: the outputs of this block with its quantized weights "
                   "(GPTQ's sequential scheme, default) or with its float weights (one forward pass less)")
    q.add_argument("--first-token-weight", type=finite_float, default=default_of("first_token_weight"), metavar="W",
                   help="how many times each calibration window's first position (the attention sink, whose keys "
                   "and values every later token reads) counts in the Hessians (default: 1, as GPTQ)")
    q.add_argument("--correct-upstream", type=finite_float, default=default_of("correct_upstream"), metavar="A",
                   help="fit each linear, on the quantized model's inputs, this far (0..1) towards the float model's "
                   "output on the float model's inputs, so that it also corrects the error the quantized layers "
                   "before it left in its inputs (GPTAQ's asymmetric calibration; one more float forward per block; "
                   "0.25 measured best, 1 overfits; default: 0, GPTQ's objective; docs/calibration.md)")
    q.add_argument("--true-sequential", action="store_true", help="collect each input group's Hessian (q/k/v, o, "
                   "gate/up, down) in a pass of its own, after the block's earlier groups are quantized, so o_proj "
                   "and down_proj fit the block's own quantized outputs (GPTQ's true-sequential; three more partial "
                   "block passes; default: one pass of the float block)")
    q.add_argument("--e2e-epochs", type=int, default=default_of("e2e_epochs"), metavar="N",
                   help="after the block-by-block calibration, train every quantized linear's scales together for N "
                   "passes over the calibration windows, codes frozen, so the quantized model's next-token "
                   "distribution matches the float model's (KL; EfficientQAT's end-to-end step; holds the float "
                   "model beside the quantized one; measured with --correct-upstream 0.25 and --e2e-samples 128: "
                   "W2 g64 news 7.75 -> 5.77 x fp32 in 2.6 more minutes; default: 0, off; docs/methods.md)")
    q.add_argument("--e2e-lr", type=finite_float, default=default_of("e2e_lr"), metavar="LR",
                   help=f"Adam's learning rate on log(scale) for --e2e-epochs (default: {default_of('e2e_lr')})")
    q.add_argument("--e2e-samples", type=positive_int, default=default_of("e2e_samples"), metavar="N",
                   help="train --e2e-epochs on the first N calibration windows, a random sample of the text (each "
                   "window costs about three forwards of the model; default: every window)")
    q.add_argument("--seed", type=int, default=default_of("seed"), help="seed of the calibration window sampling")
    q.add_argument("--device", default=default_of("device"), choices=["cpu", "cuda"], help="where to calibrate")
    q.add_argument("--calib-dtype", default=default_of("calib_dtype"), choices=CALIB_DTYPES,
                   help="the calibration forward's matrix products: auto = bfloat16 where the device multiplies "
                   "bf16 natively (AVX512-BF16, AMX, Arm BF16, CUDA) for the layer methods at 4 bits or more, float32 "
                   "elsewhere, below 4 bits and where blocks are trained; the states, Hessian sums and solvers stay float32 (default: auto; "
                   "docs/calibration.md has its measured cost)")

def add_mixed_flags(q) -> None:
    m = q.add_argument_group("mixed precision (a width per linear, chosen to fit a size budget)")
    m.add_argument("--mixed", action="store_true", help="quantize with a width per linear; needs --budget")
    m.add_argument("--budget", help="average code bits per quantized weight (e.g. 3.0), stored bits per "
                   "quantized weight, scales and zero points counted (e.g. 3.3bpw, llama.cpp's bpw), or the "
                   "megabytes of the MatMulNBits weights onnxruntime stores (e.g. 30MB); implies --mixed")
    m.add_argument("--candidates", type=candidates_arg, help="the grids a layer may get, BITS[:GROUP] "
                   "(default: 2:64,4:128,8:128, the widths onnxruntime runs fast; 2:64,4:64,8:64 where some "
                   "linear's input size is not a multiple of 128, which onnxruntime would pad)")
    m.add_argument("--sensitivity", choices=["fisher", "hessian"], default="fisher",
                   help="what a width costs a layer: fisher = 1/2 sum F dW^2, the loss change (default; one "
                   "backward pass per window through the whole model), hessian = the layer's own output error")
    m.add_argument("--sensitivity-samples", type=positive_int, default=SENSITIVITY_SAMPLES,
                   help=f"calibration windows for the estimates (default: {SENSITIVITY_SAMPLES})")
    m.add_argument("--sensitivity-from", metavar="CKPT", help="reuse the estimates stored in an earlier mixed "
                   "checkpoint (or its quantization.json; made for the same --candidates) instead of measuring them again")

def method_flag_conflict(args) -> str | None:
    """A flag that the chosen method would silently ignore is a mistake worth one clear line. (The refusals
    that the API shares, such as a nested method's --bits, are QuantConfig.validate()'s.)"""
    from ..solvers import get_method, methods_with_option
    method = get_method(args.method)
    for option, flag in option_flags().items():
        if getattr(args, option) is not None and option not in method.option_names:
            return f"{flag.flag} does not apply to {args.method}; it applies to {', '.join(methods_with_option(option))}"
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

def mixed_config(args):
    if args.budget is None:
        return None
    from ..planning.mixed import MixedPrecision, parse_budget
    budget, unit = parse_budget(args.budget)
    return MixedPrecision(budget, unit, tuple(args.candidates) if args.candidates else None, args.sensitivity,
                          args.sensitivity_samples, args.sensitivity_from)


def config_from(args):
    """The QuantConfig that quantize's flags ask for (a flag a method would ignore is refused first)."""
    from ..config import QuantConfig
    from ..solvers import get_method
    conflict = method_flag_conflict(args)
    if conflict:
        raise EdgeqError(conflict)
    method = get_method(args.method)
    opts = {option: getattr(args, option) for option in option_flags() if getattr(args, option) is not None}
    bits = args.bits if args.bits is not None else max(method.resolve(opts).widths) if method.nested else \
        default_of("bits")
    return QuantConfig(method=args.method, bits=bits, group_size=args.group_size, sym=args.sym,
                       samples=args.samples, seq_len=args.seq_len, batch_size=args.batch_size, seed=args.seed,
                       device=args.device, solver_opts=opts, block_epochs=args.block_epochs, block_lr=args.block_lr,
                       propagate=args.propagate, first_token_weight=args.first_token_weight,
                       correct_upstream=args.correct_upstream, true_sequential=args.true_sequential,
                       e2e_epochs=args.e2e_epochs, e2e_lr=args.e2e_lr, e2e_samples=args.e2e_samples,
                       calib_dtype=args.calib_dtype, transforms=tuple(args.transform),
                       block_loss=args.block_loss, mixed=mixed_config(args), layer_grids=tuple(args.layer_grid),
                       lm_head=HEAD_WIDTHS[args.lm_head])

"""`edgeq quantize | eval | export | generate | bench`: the command line. Every refusal is one line on stderr and
exit code 2. parsers.py holds the parser, quantize_flags.py quantize's flags, commands.py what each command does."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import EdgeqError
from .parsers import QUANTIZE_HELP, OneLineParser, add_bench_parser, add_eval_parser, add_export_parser, add_generate_parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; quantize's flags (from the method records, which need torch) only when `command` is
    quantize or None (all of them)."""
    from .. import __version__
    parser = OneLineParser(prog="edgeq", description="Quantize LLM weights on a CPU for edge "
                                     "deployment (ONNX MatMulNBits), and measure what it costs.")
    parser.add_argument("--version", action="version", version=f"edgeq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    if command in (None, "quantize"):
        from .quantize_flags import add_quantize_parser
        add_quantize_parser(sub)
    else:
        sub.add_parser("quantize", help=QUANTIZE_HELP)
    add_eval_parser(sub)
    add_export_parser(sub)
    add_bench_parser(sub)
    add_generate_parser(sub)
    return parser


QUANTIZE_EXTRA = {"torch", "transformers", "numba", "onnx", "safetensors", "gguf", "accelerate", "tqdm"}

RUNTIME_EXTRA = {"onnx", "tqdm"}  # also in the runtime extra: bench, generate and eval of an exported folder


def command_of(argv: list[str]) -> str | None:
    """The command named in argv (its first word that is not a flag), so that only its parser is built."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_of(argv)).parse_args(argv)
    from . import commands
    if getattr(args, "quiet", False):  # the libraries' bars too (transformers' loading, huggingface_hub's
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # downloads): both read this when first imported
    try:
        {"quantize": commands.cmd_quantize, "eval": commands.cmd_eval, "export": commands.cmd_export,
         "generate": commands.cmd_generate, "bench": commands.cmd_bench}[args.command](args)
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

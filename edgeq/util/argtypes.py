"""Parsers of command-line values, torch-free: the CLI's flags and the methods' option flags
(solvers/options.py) both use them, so a value is read the same way wherever it is declared. Each raises
argparse.ArgumentTypeError, which argparse turns into one line and exit code 2."""
from __future__ import annotations

import argparse
import math

from ..errors import EdgeqError


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


def parse_slice(text: str) -> int | float:
    """A width ('4': every layer at 4 bits) or an average ('3.5': Mix'n'Match, a width per layer)."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise EdgeqError(f"expected a width (4) or an average number of bits (3.5), got {text!r}") from None


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


def windows_arg(value: str) -> int | None:
    """A positive window count, or 'all' (None: every window)."""
    return None if value.lower() == "all" else positive_int(value)

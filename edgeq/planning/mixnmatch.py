"""Mix'n'Match (MatQuant): one nested int8 model, a slice width per linear group chosen at load time so that
the average code bits meet a budget. torch-free: a device plans from the export's metadata with numpy alone.

A unit is what one MatMulNBits node holds: the linears of a block that share an input (q/k/v, gate/up,
o, down), so a checkpoint sliced by a plan and the int8 export sliced by the same plan are the same model.
Each unit has its weight count and, per width, an estimate of what that slice costs the model (quantize
stores them: half the Fisher-weighted squared error of the slice, summed over the unit's linears); the plan
is the exact knapsack of allocate.py over those, the one mixed precision uses.
"""
from __future__ import annotations

from .allocate import allocate
from ..config import SENSITIVITY_SAMPLES
from ..errors import EdgeqError

SAMPLES = SENSITIVITY_SAMPLES  # calibration windows for the Fisher diagonal behind the estimates


def check_budget(budget: float, widths) -> None:
    if not min(widths) <= budget <= max(widths):
        raise EdgeqError(f"an average of {budget:g} bits is outside the widths these codes serve "
                         f"({min(widths)} to {max(widths)})")


def plan(units: dict[str, tuple[int, list[float]]], widths: list[int], budget: float) -> dict[str, int]:
    """{unit: width}: the least summed estimate whose code bits average at most `budget` per weight.
    units: name -> (weights, [estimate per width, in `widths` order])."""
    check_budget(budget, widths)
    names = list(units)
    total = sum(units[n][0] for n in names)
    costs = [[units[n][0] * b for b in widths] for n in names]
    chosen = allocate(costs, [list(units[n][1]) for n in names], int(budget * total)).choice
    return {n: widths[j] for n, j in zip(names, chosen)}


def group_units(estimates: dict[str, list[float]], sizes: dict[str, int], groups) -> dict[str, tuple]:
    """Units of linears: groups is a list of lists of linear names (the input groups of each block); a
    unit is named after its first linear; its estimates are the sums of its linears', in order."""
    units = {}
    for names in groups:
        missing = [n for n in names if n not in estimates]
        if missing:
            raise EdgeqError(f"no slice estimate for {missing[0]}: re-quantize with this edgeq to use a budget")
        per_width = zip(*(estimates[n] for n in names))
        units[names[0]] = (sum(sizes[n] for n in names), [sum(column) for column in per_width])
    return units


def average_bits(widths_of: dict[str, int], sizes: dict[str, int]) -> float:
    return sum(sizes[n] * b for n, b in widths_of.items()) / sum(sizes[n] for n in widths_of)

"""Picking one width per layer under a size budget: an exact multiple-choice knapsack.

Each layer has a few candidate grids (e.g. 2-bit g64, 4-bit g128, 8-bit g128), each with an integer cost
(code bits, or the bytes onnxruntime stores) and an estimated loss increase. The allocation minimises the
summed loss estimate with the summed cost at most the budget, by dynamic programming over the cost in
units of the costs' greatest common divisor: exact, never over budget. torch-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import EdgeqError

MAX_STATES = 500_000  # cost units the table spans (a byte per layer each); beyond, costs are rounded up


@dataclass(frozen=True)
class Allocation:
    choice: list[int]    # the candidate index of each layer
    cost: int            # total cost of the choice, in the costs' unit
    value: float         # total estimated loss of the choice
    exact: bool          # False when costs had to be rounded up to fit the table (then possibly suboptimal)


def allocate(costs: list[list[int]], values: list[list[float]], budget: int) -> Allocation:
    """One candidate per layer, total cost <= budget, least total value (ties: least cost)."""
    costs = [[int(c) for c in row] for row in costs]
    base = sum(min(row) for row in costs)
    if budget < base:
        raise EdgeqError(f"the budget is below the smallest model the candidates allow ({base} vs {budget})")
    extra = [[c - min(row) for c in row] for row in costs]  # cost above each layer's cheapest candidate
    room = min(budget - base, sum(max(row) for row in extra))
    unit = math.gcd(*[c for row in extra for c in row]) or 1  # every cost a multiple: flooring room is exact
    exact = room // unit <= MAX_STATES
    if not exact:
        unit = -(-room // MAX_STATES)
    steps = [[-(-c // unit) for c in row] for row in extra]  # rounded up: the budget still holds
    chosen = _solve(steps, values, room // unit)
    cost = sum(costs[i][j] for i, j in enumerate(chosen))
    return Allocation(chosen, cost, float(sum(values[i][j] for i, j in enumerate(chosen))), exact)


def _solve(steps: list[list[int]], values: list[list[float]], cap: int) -> list[int]:
    """best[c] = least value of the layers so far with extra cost exactly c; argmins kept for the way back."""
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    picks = np.zeros((len(steps), cap + 1), dtype=np.uint8)
    for i, (row, vals) in enumerate(zip(steps, values)):
        new = np.full(cap + 1, np.inf)
        for j, (s, v) in enumerate(zip(row, vals)):
            if s > cap:
                continue
            shifted = np.full(cap + 1, np.inf)
            shifted[s:] = best[:cap + 1 - s] + v
            better = shifted < new
            new[better], picks[i, better] = shifted[better], j
        best = new
    c = int(np.argmin(best))  # argmin returns the first, i.e. the cheapest of equal values
    chosen = []
    for i in range(len(steps) - 1, -1, -1):
        j = int(picks[i, c])
        chosen.append(j)
        c -= steps[i][j]
    return chosen[::-1]

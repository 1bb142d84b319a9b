"""Mix'n'Match planning: the knapsack over slice widths against brute force, and its refusals."""
import itertools
import random

import pytest

from edgeq.util import argtypes
from edgeq.planning import mixnmatch
from edgeq.errors import EdgeqError

WIDTHS = [8, 4, 2]


def random_units(seed, count=5):
    rng = random.Random(seed)
    units = {}
    for i in range(count):
        size = rng.choice([64, 128, 192, 256])
        e2 = rng.uniform(1, 100)
        units[f"u{i}"] = (size, [e2 * rng.uniform(0, 0.01), e2 * rng.uniform(0.02, 0.3), e2])
    return units


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [2.0, 3.0, 4.5, 6.25, 8.0])
def test_plan_is_the_best_choice_within_the_budget(seed, budget):
    units = random_units(seed)
    names = list(units)
    total = sum(size for size, _ in units.values())
    feasible = []
    for choice in itertools.product(range(len(WIDTHS)), repeat=len(names)):
        bits = sum(units[n][0] * WIDTHS[j] for n, j in zip(names, choice))
        if bits <= budget * total:
            feasible.append(sum(units[n][1][j] for n, j in zip(names, choice)))
    plan = mixnmatch.plan(units, WIDTHS, budget)
    sizes = {n: units[n][0] for n in names}
    assert mixnmatch.average_bits(plan, sizes) <= budget
    assert sum(units[n][1][WIDTHS.index(plan[n])] for n in names) == pytest.approx(min(feasible))


def test_units_sum_their_linears_estimates_in_order():
    estimates = {"a.q": [1.0, 2.0, 3.0], "a.k": [0.5, 0.25, 4.0], "a.o": [1.0, 1.0, 1.0]}
    units = mixnmatch.group_units(estimates, {"a.q": 10, "a.k": 5, "a.o": 7}, [["a.q", "a.k"], ["a.o"]])
    assert units == {"a.q": (15, [1.5, 2.25, 7.0]), "a.o": (7, [1.0, 1.0, 1.0])}


def test_refusals():
    with pytest.raises(EdgeqError, match="outside the widths"):
        mixnmatch.plan(random_units(0), WIDTHS, 1.5)
    with pytest.raises(EdgeqError, match="no slice estimate for a.k"):
        mixnmatch.group_units({"a.q": [1.0]}, {"a.q": 1, "a.k": 1}, [["a.q", "a.k"]])
    with pytest.raises(EdgeqError, match="width .* or an average"):
        argtypes.parse_slice("four")
    assert argtypes.parse_slice("4") == 4 and isinstance(argtypes.parse_slice("4.0"), float)

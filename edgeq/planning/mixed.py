"""Mixed precision under a size budget: a width per linear from a few candidate grids, chosen by an exact
knapsack on per-layer sensitivity estimates (calib/sensitivity.py).

The budget is the average code bits per quantized weight (`3.0`: what papers call the bit width; scales and
zero points not counted), the average stored bits per quantized weight (`3.3bpw`: llama.cpp's bits per
weight, scales and zero points counted as onnxruntime stores them), or the megabytes onnxruntime stores for
the quantized linears (`25MB`: MatMulNBits codes, float32 scales and packed zero points, the true size on the
device). The last two are what the device reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..quant import grid
from .allocate import Allocation, allocate
from ..config import SENSITIVITY_SAMPLES
from ..errors import EdgeqError
from ..util.paths import read_json_object
from ..quant.layout import initializer_bytes, layout_for

DEFAULT_CANDIDATES = ((2, 64), (4, 128), (8, 128))  # the widths onnxruntime runs fast; 2-bit needs g64
UNPADDED_GROUP = 64  # a default group that would pad some K becomes this (default_candidates)
UNITS = ("bits", "bpw", "mb")  # code bits a weight, stored bits a weight, stored megabytes
ESTIMATORS = ("fisher", "hessian")


@dataclass(frozen=True)
class MixedPrecision:
    budget: float
    unit: str = "bits"
    candidates: tuple[tuple[int, int], ...] | None = None  # (bits, group size; -1 = per channel); None: the
    # model's default (default_candidates)
    estimator: str = "fisher"
    samples: int = SENSITIVITY_SAMPLES  # calibration windows for the sensitivity estimates
    sensitivity_from: str | None = None  # reuse the estimates of an earlier mixed checkpoint (or its JSON)

    def __post_init__(self):
        if self.unit not in UNITS or not self.budget > 0:
            raise EdgeqError(f"the budget must be a positive number of bits or MB, got {self.budget} {self.unit}")
        if self.estimator not in ESTIMATORS:
            raise EdgeqError(f"sensitivity estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.candidates is not None and (len(set(self.candidates)) != len(self.candidates)
                                            or len(self.candidates) < 2):
            raise EdgeqError("mixed precision needs at least two distinct candidate grids")

    @property
    def widths(self) -> tuple[int, ...]:  # default_candidates keeps DEFAULT_CANDIDATES' bits, whatever the model
        return tuple(bits for bits, _ in self.candidates or DEFAULT_CANDIDATES)

    def specs(self, sym: bool, shapes: dict[str, tuple[int, int]]) -> list[grid.QuantSpec]:
        return [grid.QuantSpec(bits, gs, sym) for bits, gs in self.candidates or default_candidates(shapes)]


def default_candidates(shapes: dict[str, tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """DEFAULT_CANDIDATES, each group that does not divide some linear's K cut to UNPADDED_GROUP. onnxruntime
    pads K to whole groups (SmolLM2-135M's 576 to 640 at g128), so there 4:128 stores more bytes than 4:64 and
    codes worse: on the front, a 4.0 bpw budget went from 1.236 / 1.679 to 1.192 / 1.539 x fp32 (Persuasion /
    news) with 2:64,4:64,8:64 (benchmarks/results/front.jsonl)."""
    def pads(group: int) -> bool:
        return any(k % group for _, k in shapes.values())
    return tuple((bits, UNPADDED_GROUP if group > UNPADDED_GROUP and pads(group) else group)
                 for bits, group in DEFAULT_CANDIDATES)


def label(spec: grid.QuantSpec) -> str:
    return f"{spec.bits}g{'ch' if spec.group_size == grid.PER_CHANNEL else spec.group_size}"


def parse_budget(text: str) -> tuple[float, str]:
    """'3.0' -> (3.0, 'bits'); '3.3bpw' -> (3.3, 'bpw'); '25MB' -> (25.0, 'mb')."""
    text = text.strip().lower()
    unit = next((u for u in ("mb", "bpw") if text.endswith(u)), "bits")
    try:
        value = float(text[:-len(unit)] if unit != "bits" else text)
    except ValueError:
        raise EdgeqError(f"--budget takes average code bits per weight (3.0), stored bits per weight (3.3bpw) or "
                         f"megabytes (25MB), got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise EdgeqError(f"--budget must be a positive finite number, got {text!r}")
    return value, unit


def cost(name: str, shape: tuple[int, int], spec: grid.QuantSpec, unit: str) -> int:
    """Code bits of the layer, or the bits (bpw) or bytes (mb) of its MatMulNBits initializers."""
    n, k = shape
    if unit == "bits":
        return n * k * spec.bits
    stored = initializer_bytes(n, layout_for(name, k, spec.bits, spec.group_size))
    return 8 * stored if unit == "bpw" else stored


def budget_in_units(mp: MixedPrecision, shapes: dict[str, tuple[int, int]]) -> int:
    if mp.unit in ("bits", "bpw"):
        return int(mp.budget * sum(n * k for n, k in shapes.values()))
    return int(mp.budget * 2 ** 20)


def check_budget(mp: MixedPrecision, shapes: dict, specs: list[grid.QuantSpec]) -> None:
    """Refuse a budget outside what the candidates can reach, before any calibration."""
    per_layer = [[cost(n, shape, s, mp.unit) for s in specs] for n, shape in shapes.items()]
    lo, hi = sum(map(min, per_layer)), sum(map(max, per_layer))
    budget = budget_in_units(mp, shapes)
    if budget < lo:
        raise EdgeqError(f"budget {mp.budget} {mp.unit} is below the smallest model the candidates allow "
                         f"({describe(lo, mp.unit, shapes)})")
    if budget > hi:
        raise EdgeqError(f"budget {mp.budget} {mp.unit} is above the largest candidate everywhere "
                         f"({describe(hi, mp.unit, shapes)}): quantize uniformly instead")


def describe(units: int, unit: str, shapes: dict) -> str:
    if unit in ("bits", "bpw"):
        kind = "code" if unit == "bits" else "stored"
        return f"{units / sum(n * k for n, k in shapes.values()):.3f} {kind} bits per weight"
    return f"{units / 2 ** 20:.2f} MB"


def plan(mp: MixedPrecision, shapes: dict[str, tuple[int, int]], specs: list[grid.QuantSpec],
         estimates: dict[str, list[float]]) -> tuple[dict[str, grid.QuantSpec], Allocation]:
    """The width of every linear that minimises the summed estimate within the budget."""
    names = list(shapes)
    missing = [n for n in names if n not in estimates]
    if missing:
        raise EdgeqError(f"the sensitivity estimates lack {len(missing)} layers (e.g. {missing[0]}); "
                         "were they made for another model?")
    costs = [[cost(n, shapes[n], s, mp.unit) for s in specs] for n in names]
    result = allocate(costs, [estimates[n] for n in names], budget_in_units(mp, shapes))
    return {n: specs[j] for n, j in zip(names, result.choice)}, result


def summary(mp: MixedPrecision, shapes: dict, chosen: dict[str, grid.QuantSpec], specs: list[grid.QuantSpec],
            estimates: dict[str, list[float]], result: Allocation) -> dict:
    """What goes into the checkpoint's quantization.json: the plan, what it achieved, per-layer choices."""
    weights = sum(n * k for n, k in shapes.values())
    code_bits = sum(shapes[n][0] * shapes[n][1] * s.bits for n, s in chosen.items())
    size = sum(cost(n, shapes[n], s, "mb") for n, s in chosen.items())
    return {
        "budget": mp.budget, "unit": mp.unit, "estimator": mp.estimator, "samples": mp.samples,
        "sensitivity_from": mp.sensitivity_from,
        "candidates": [label(s) for s in specs], "exact": result.exact,
        "bits_per_weight": round(code_bits / weights, 4), "stored_bits_per_weight": round(8 * size / weights, 4),
        "matmulnbits_mb": round(size / 2 ** 20, 3),
        "layers": {n: {"width": label(s), "estimate": estimates[n][specs.index(s)]} for n, s in chosen.items()},
    }


def table(mixed_meta: dict) -> str:
    """The per-layer plan as printed after quantizing: layer, width, sensitivity estimate."""
    lines = [f"{'layer':44s} {'width':>6s} {mixed_meta['estimator'] + ' estimate':>18s}"]
    for name, row in mixed_meta["layers"].items():
        lines.append(f"{name:44s} {row['width']:>6s} {row['estimate']:18.4g}")
    counts = {}
    for row in mixed_meta["layers"].values():
        counts[row["width"]] = counts.get(row["width"], 0) + 1
    stored = mixed_meta.get("stored_bits_per_weight")  # checkpoints from before it was recorded lack it
    lines.append(f"{mixed_meta['bits_per_weight']:.3f} code bits per weight"
                 + (f" ({stored:.3f} stored)" if stored is not None else "")
                 + f", {mixed_meta['matmulnbits_mb']:.2f} MB "
                 f"of MatMulNBits weights; layers per width: "
                 + ", ".join(f"{w} {counts.get(w, 0)}" for w in mixed_meta["candidates"]))
    return "\n".join(lines)


def load_estimates(path: str) -> dict:
    """The sensitivity record of an earlier run: a mixed checkpoint folder or the JSON it holds."""
    p = Path(path)
    p = p / "quantization.json" if p.is_dir() else p
    record = read_json_object(p, "sensitivity record")
    record = record.get("sensitivity", record)
    if "estimates" not in record or "candidates" not in record:
        raise EdgeqError(f"{path} holds no sensitivity estimates (quantize with --budget once to make them)")
    return record

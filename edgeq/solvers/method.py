"""What a quantization method is, declared once: a `Method` record. The CLI's --method choices and flag checks,
`QuantConfig.validate()`, the pipeline and the sensitivity estimates all read these records; nothing else lists
methods. Torch-free, so the CLI can build its parser (and a device can run `edgeq bench`) without torch.

A method's options are a frozen dataclass whose field defaults are the method's defaults, the only place they
are written. Unknown options are an error (from the API as from the CLI), never silently dropped.

Two kinds of method (the pipeline calls them differently):
- layer: `solve(W, H, spec, **options) -> QuantizedWeight`, one linear at a time (H is None without calibration);
- learned: `Rounding(W, spec, **options)`, trained on each whole block's output by calib/reconstruct.py; the
  options' `steps`, `lr` and `seed` are the training schedule's, the rest the rounding's.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from ..errors import EdgeqError
from .options import LR, STEPS, option

KINDS = ("layer", "learned")
# Block training (learned methods, --block-epochs): how a block's output error is measured. "mse": the mean
# squared error (AutoRound's and FlexRound's loss). "relative": each token's squared error over its target's
# squared norm, averaged over tokens. From block 11 on, SmolLM2-135M holds each window's first token (the
# attention sink) at a hidden norm of ~23,000 against ~130-700 for the others: in block 11, which creates it,
# that token is 98.7% of RTN W3's output MSE, and in later blocks the error it carries in from block 11
# dominates the learned loss. The next block reads the states through RMSNorm, which sees relative errors.
BLOCK_LOSSES = ("mse", "relative")
# The default per kind of training, chosen from the method table (benchmarks/results/quality.jsonl, protocol
# standard-512x128, persuasion / news perplexity, mse -> relative). The learned methods gained on both texts:
# W3 g128 flexround 46.43 / 53.31 -> 44.23 / 47.33, lrq 48.14 / 61.69 -> 46.69 / 55.22, signround 48.10 / 64.17
# -> 44.89 / 50.81; W4 per-channel flexround 40.33 / 38.75 -> 39.34 / 36.86. --block-epochs ("layer") lost:
# gptq W2 g64 --block-epochs 2 77.24 / 214.61 -> 80.66 / 223.63.
DEFAULT_BLOCK_LOSS = {"learned": "relative", "layer": "mse"}


@dataclass(frozen=True)
class Training:
    """The schedule every learned method shares. lr None means 1 / steps (SignRound's reference rule)."""
    steps: int = option(150, STEPS)
    lr: float | None = option(None, LR)
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise EdgeqError(f"--steps must be >= 1, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise EdgeqError("--lr must be > 0")

    @property
    def learning_rate(self) -> float:
        return self.lr or 1.0 / self.steps


SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(Training))


@dataclass
class Schedule:
    """A learned method's block training as calib/reconstruct.py runs it."""
    steps: int
    lr: float
    optimizer: str  # "adam" | "sign"
    seed: int = 0


@dataclass(frozen=True)
class Method:
    name: str
    kind: str                   # "layer" or "learned" (see the module docstring)
    options: type               # frozen dataclass: the option names and their defaults
    entry: object               # solve or the Rounding class, or "module:attribute" under edgeq.solvers (lazy)
    summary: str                # one line for --help
    needs_hessian: bool = True  # layer methods: solved on the calibration Hessian (else no calibration at all)
    nested: bool = False        # int8 codes whose top bits serve narrower widths (sliced on load or on the device)
    optimizer: str = "adam"     # learned methods: "adam" or "sign"
    order: int = 100            # place in --method's list and the docs (lower first; then by name)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "learned" and not issubclass(self.options, Training):
            raise ValueError(f"method {self.name}: a learned method's options extend Training")

    @property
    def learned(self) -> bool:
        return self.kind == "learned"

    @property
    def calibrated(self) -> bool:
        return self.learned or self.needs_hessian

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))

    def resolve(self, opts: dict | None = None):
        """The method's options with `opts` over the defaults; an unknown name is a one-line refusal."""
        opts = dict(opts or {})
        unknown = sorted(set(opts) - set(self.option_names))
        if unknown:
            raise EdgeqError(f"{self.name} has no option {', '.join(map(repr, unknown))}; its options: "
                             f"{', '.join(self.option_names) or 'none'}")
        return self.options(**opts)

    def keywords(self, opts: dict | None = None) -> dict:
        """The resolved options as keyword arguments (not dataclasses.asdict: it would deep-copy a list
        option, such as decoupleq's trace, that the caller reads back)."""
        options = self.resolve(opts)
        return {name: getattr(options, name) for name in self.option_names}

    def implementation(self):
        if not isinstance(self.entry, str):
            return self.entry
        module, _, attribute = self.entry.partition(":")  # imported when first used: torch stays unloaded
        return getattr(importlib.import_module(f"edgeq.solvers.{module}"), attribute)

    def solver(self):
        """solve(W, H, spec, **opts) with the defaults filled in and unknown options refused (layer methods)."""
        if self.learned:
            raise EdgeqError(f"{self.name} learns its rounding on whole blocks; it has no per-layer solver")
        solve = self.implementation()

        def solve_with_defaults(W, H, spec, **opts):
            return solve(W, H, spec, **self.keywords(opts))
        return solve_with_defaults

    def rounding(self, W, spec, **opts):
        """The learned method's Rounding for one linear (the schedule's options are not the rounding's)."""
        options = self.keywords(opts)
        return self.implementation()(W, spec, **{k: v for k, v in options.items() if k not in SCHEDULE_FIELDS})

    def schedule(self, opts: dict | None = None):
        """(steps, learning rate, optimizer, seed) of a learned method's block training."""
        options = self.resolve(opts)
        return Schedule(options.steps, options.learning_rate, self.optimizer, options.seed)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method (the built-in ones in solvers/__init__.py; a plug-in or a test can add its own)."""
    if method.name in _REGISTRY and _REGISTRY[method.name] != method:
        raise ValueError(f"a different method is already registered as {method.name!r}")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def method_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY, key=lambda name: (_REGISTRY[name].order, name)))


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise EdgeqError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    return _REGISTRY[name]


def methods_with_option(option: str) -> tuple[str, ...]:
    return tuple(name for name in method_names() if option in _REGISTRY[name].option_names)

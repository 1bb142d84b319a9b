"""Solver registry, once, here. A layer method maps to `solve(W, H, spec, **opts) -> QuantizedWeight`; a
learned-rounding method maps to its rounding class, `Rounding(W, spec, **opts)`, which the block
reconstruction engine (calib/reconstruct.py) trains on a whole block's output."""
from __future__ import annotations

import torch

from ..errors import EdgeqError


def _rtn(*args, **kwargs):
    from .rtn import solve
    return solve(*args, **kwargs)


def _gptq(*args, **kwargs):
    from .gptq import solve
    return solve(*args, **kwargs)


def _decoupleq(*args, **kwargs):
    from .decoupleq import solve
    return solve(*args, **kwargs)


def _matquant(*args, **kwargs):
    from .matquant import solve
    return solve(*args, **kwargs)


def _signround(W, spec, **opts):
    from .signround import SignRound
    return SignRound(W, spec, **opts)


def _flexround(W, spec, **opts):
    from .flexround import FlexRound
    return FlexRound(W, spec, **opts)


def _lrq(W, spec, **opts):
    from .lrq import LRQ
    return LRQ(W, spec, **opts)


def _matround(W, spec, **opts):
    from .matround import NestedRound
    return NestedRound(W, spec, **opts)


SOLVERS = {"rtn": _rtn, "gptq": _gptq, "decoupleq": _decoupleq, "matquant": _matquant}
NEEDS_HESSIAN = {"rtn": False, "gptq": True, "decoupleq": True, "matquant": True}
LEARNED = {"signround": _signround, "flexround": _flexround, "lrq": _lrq, "matround": _matround}
NESTED = ("matquant", "matround")  # int8 codes whose slices serve lower widths
# steps, learning rate and optimiser of each learned method, sized so that SmolLM2-135M takes < 20 min on
# 2 cores. Learning rates from SmolLM2 block 3, W3 g128, 100 steps (block output MSE; RTN 0.158):
# flexround 2.5e-3 0.056, 5e-3 0.046, 1e-2 0.039; lrq 2e-3 0.063, 1e-2 0.044 (short runs want larger
# steps than the papers' 5000-step rates); signround at its reference 1/steps.
LEARNED_DEFAULTS = {"signround": {"steps": 150, "lr": None, "optimizer": "sign"},  # lr None: 1 / steps
                    "flexround": {"steps": 150, "lr": 1e-2, "optimizer": "adam"},
                    "lrq": {"steps": 150, "lr": 1e-2, "optimizer": "adam"},
                    # matround's offset counts 2-bit steps (64 int8 codes): a step of 1/steps would move every
                    # code by 64/steps, so its rate stays at the 1/150 measured on SmolLM2 whatever --steps is
                    "matround": {"steps": 150, "lr": 1 / 150, "optimizer": "sign"}}
METHODS = (*SOLVERS, *LEARNED)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise EdgeqError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")


def needs_calibration(method: str) -> bool:
    check_method(method)
    return method in LEARNED or NEEDS_HESSIAN[method]


def get_solver(method: str):
    check_method(method)
    if method in LEARNED:
        raise EdgeqError(f"{method} learns its rounding on whole blocks; it has no per-layer solver")
    return SOLVERS[method]


def weighted_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """The layer objective tr((W - W_hat) H (W - W_hat)^T): the output error on the calibration inputs."""
    D = (W.double() - W_hat.double())
    return float(((D @ H.double()) * D).sum())

"""Solver registry: a method name maps to `solve(W, H, spec, **opts) -> QuantizedWeight`, once, here."""
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


SOLVERS = {"rtn": _rtn, "gptq": _gptq, "decoupleq": _decoupleq, "matquant": _matquant}
NEEDS_HESSIAN = {"rtn": False, "gptq": True, "decoupleq": True, "matquant": True}


def get_solver(method: str):
    try:
        return SOLVERS[method]
    except KeyError:
        raise EdgeqError(f"unknown method {method!r}; choose one of: {', '.join(SOLVERS)}") from None


def weighted_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """The layer objective tr((W - W_hat) H (W - W_hat)^T): the output error on the calibration inputs."""
    D = (W.double() - W_hat.double())
    return float(((D @ H.double()) * D).sum())

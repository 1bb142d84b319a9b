"""The quantization methods. Each module here is one method: its solver (a `solve` or a Rounding class), its
options dataclass (the defaults and the flags, see options.py) and one `register(Method(...))` (method.py says
what a record is). Importing this package imports every such module, so adding a method is its file and its
test: the CLI's --method choices and flags, `QuantConfig.validate()`, the pipeline and docs/methods.md read
the records, nothing lists methods by hand. (Importing it imports torch: the CLI builds quantize's parser
from the records only when quantize is asked for.)"""
from __future__ import annotations

import importlib
import pkgutil

from .method import Method, Training, get_method, method_names, methods_with_option, register  # noqa: F401

_NOT_METHODS = {"method", "options"}

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_METHODS:
        importlib.import_module(f"{__name__}.{_module.name}")


def get_solver(name: str):
    """solve(W, H, spec, **options) of a layer method, defaults filled in, unknown options refused."""
    return get_method(name).solver()


def weighted_error(W, W_hat, H) -> float:
    """The layer objective tr((W - W_hat) H (W - W_hat)^T): the output error on the calibration inputs."""
    D = (W.double() - W_hat.double())
    return float(((D @ H.double()) * D).sum())

"""Pre-transforms: exact rewrites of the float model that every solver then sits on (the transformed model
gives the same logits), declared here once. quantize applies them after loading, before calibration, and
records each in quantization.json; the checkpoint holds the transformed weights, so nothing downstream (eval,
export, the runtime) needs to know. Torch-free: the CLI reads the names and help without importing torch."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import EdgeqError


@dataclass(frozen=True)
class Transform:
    name: str
    module: str  # edgeq.transforms.<module>.apply(model, arch, seed) -> record
    help: str


TRANSFORMS = {t.name: t for t in [
    Transform("rotate", "rotate", "a randomized Hadamard rotation of the residual stream and of each head's "
              "values, folded into the weights (QuaRot/SpinQuant, offline): spreads outlier channels before "
              "the grid is fitted; a tied head stays tied, with one d x d float matrix after the final norm"),
]}


def check_transforms(names) -> None:
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise EdgeqError(f"unknown --transform {unknown[0]!r}; edgeq has: {', '.join(TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise EdgeqError("a --transform is given twice")


def apply_transforms(model, arch, names, seed: int) -> list[dict]:
    """Apply each named transform in order (a streamed model's blocks as they load); their records."""
    import importlib
    check_transforms(names)
    return [importlib.import_module(f"{__name__}.{TRANSFORMS[name].module}").apply(model, arch, seed)
            for name in names]

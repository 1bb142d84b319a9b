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
    module: str  # edgeq.transforms.<module>.apply(model, arch, seed) -> record (None: recorded later)
    help: str
    # "model": applied once to the float model as it loads; "block": searched inside the block loop on each
    # block's calibration inputs (calib/pipeline.py), so it needs calibration even under RTN
    stage: str = "model"


TRANSFORMS = {t.name: t for t in [
    Transform("rotate", "rotate", "a randomized Hadamard rotation of the residual stream and of each head's "
              "values, folded into the weights (QuaRot/SpinQuant, offline): spreads outlier channels before "
              "the grid is fitted; a tied head stays tied, with one d x d float matrix after the final norm"),
    Transform("awq", "awq", "activation-aware scaling (AWQ): per block, per input channel scales searched on the "
              "calibration activations (q/k/v, v->o, gate/up, up->down) and folded into the norm or linear "
              "before them; with rtn it is AWQ itself, under gptq it scales what GPTQ then solves", "block"),
]}


def check_transforms(names) -> None:
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise EdgeqError(f"unknown --transform {unknown[0]!r}; edgeq has: {', '.join(TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise EdgeqError("a --transform is given twice")


def check_family(transform: str, config, supported: tuple, refused: dict) -> None:
    """A one-line refusal of a model family a transform does not apply to (refused: family -> why)."""
    model_type = getattr(config, "model_type", None)
    if model_type in refused:
        raise EdgeqError(f"--transform {transform} does not apply to {model_type}: {refused[model_type]}")
    if model_type not in supported:
        raise EdgeqError(f"--transform {transform} supports {', '.join(supported)}, not {model_type!r}")


def block_transforms(names) -> list[str]:
    """The named transforms that run inside the block loop (they need calibration inputs)."""
    return [name for name in names if TRANSFORMS[name].stage == "block"]


def apply_transforms(model, arch, names, seed: int) -> list[dict]:
    """Apply each named model transform in order (a streamed model's blocks as they load) and check that each
    block transform applies to the model; the model transforms' records."""
    import importlib
    check_transforms(names)
    records = [importlib.import_module(f"{__name__}.{TRANSFORMS[name].module}").apply(model, arch, seed)
               for name in names]
    return [record for record in records if record is not None]

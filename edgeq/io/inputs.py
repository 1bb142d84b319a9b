"""What a MODEL argument names, worked out once where a command starts: an exported ONNX folder, an edgeq
checkpoint, another tool's quantized folder, or a float model (the bundled one, a Hugging Face folder, bf16
shards, a GGUF file, a Hub id, resolved to a models.ModelSource). Commands dispatch on the kind instead of probing the path again as it
travels. Torch-free: a device's runtime install scores an ONNX folder through here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeqError

ONNX_FILE = "model.onnx"  # runtime.session.MODEL_FILE, kept here so this module imports no numpy
CHECKPOINT_META = "quantization.json"  # checkpoint.META_FILE, for the same reason
KINDS = ("onnx", "checkpoint", "quantized", "float")


@dataclass(frozen=True)
class ModelInput:
    kind: str                  # one of KINDS
    label: str                 # how results name it: the argument, or the bundled model's name
    path: Path | None = None   # the folder of an ONNX export or a checkpoint
    source: object = None      # models.ModelSource of a float model

    def refuse_unless(self, *kinds: str, command: str) -> "ModelInput":
        if self.kind not in kinds:
            wanted = " or ".join(DESCRIPTIONS[k] for k in kinds)
            raise EdgeqError(f"{self.label} is {DESCRIPTIONS[self.kind]}; {command} takes {wanted}")
        return self


DESCRIPTIONS = {"onnx": "an exported ONNX folder", "checkpoint": "an edgeq checkpoint",
                "quantized": "a folder quantized by another tool (GPTQ, AWQ, compressed-tensors, auto-round)",
                "float": "a float model (folder, .gguf file or Hub id)"}


def kind_of(model: str | None) -> str:
    """The kind of `model` from what its folder holds, nothing fetched or loaded (None: the bundled model)."""
    if model is not None:
        path = Path(model).expanduser()
        if (path / ONNX_FILE).is_file():
            return "onnx"
        if (path / CHECKPOINT_META).is_file():
            return "checkpoint"
        from .quantized_folder import is_quantized_folder
        if is_quantized_folder(path):
            return "quantized"
    return "float"


def resolve_model(model: str | None) -> ModelInput:
    """`model` as a typed input. A float model's source is resolved here (models.resolve_source), so a
    missing path or a Hub id that cannot be fetched is refused before any other work."""
    kind = kind_of(model)
    if kind != "float":
        return ModelInput(kind, str(model), Path(model).expanduser())
    from .models import resolve_source
    from .validate import check_float_source
    source = resolve_source(model)
    check_float_source(source)  # before any work: one line for a broken model, never a traceback later
    return ModelInput("float", source.label, source=source)

"""A Hugging Face folder quantized by another tool (GPTQ, AWQ, compressed-tensors, auto-round: the readers are
in io/folder_readers.py), read as an edgeq checkpoint is: a float32 model with the dequantized weights, every
quantized linear's QuantizedWeight, and a meta record. `edgeq export` and `edgeq eval` take such a folder
wherever they take a checkpoint. What is not read (another quant_method, a variant of a format, act-order,
a missing or misshapen tensor) is refused in one line before anything is written."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..errors import EdgeqError


def quantization_config(path: Path) -> dict | None:
    """The folder's quantization_config (config.json's, else quantization_config.json), or None."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        found = json.loads(config_file.read_text()).get("quantization_config")
        extra = Path(path) / "quantization_config.json"
        if found is None and extra.is_file():
            found = json.loads(extra.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return found if isinstance(found, dict) else None


def is_quantized_folder(path: Path) -> bool:
    """A folder whose config names a quant_method: read here, or refused here by name (never loaded as float)."""
    config = quantization_config(path)
    return config is not None and "quant_method" in config


def quant_method(config: dict) -> str:
    from .folder_readers import READERS
    method = str(config.get("quant_method", "")).lower()
    if method not in READERS:
        raise EdgeqError(f"quant_method {method!r} is not read ({', '.join(READERS)} are)")
    return method


def read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise EdgeqError(f"{path}: a quantized folder without .safetensors weights")
    tensors = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def read_quantized_linears(path: Path) -> tuple[dict, dict, str, dict]:
    """({linear: QuantizedWeight}, the float tensors left, quant_method, quantization_config)."""
    from .folder_readers import READERS
    qconfig = quantization_config(path)
    method = quant_method(qconfig)
    tensors = read_tensors(path)
    qweights, packed = READERS[method](qconfig, tensors)
    if not qweights:
        raise EdgeqError(f"{path}: quant_method {method} but no packed linear in its tensors")
    rest = {k: v for k, v in tensors.items() if k not in packed and v.is_floating_point()}
    return qweights, rest, method, qconfig


def load_quantized_folder(path, bits=None):
    """(float32 model with the dequantized weights, {linear: QuantizedWeight}, meta), as checkpoint.load_checkpoint."""
    from transformers import AutoConfig

    from .checkpoint import _model_of_state
    from .models import arch_of
    if bits is not None:
        raise EdgeqError("--bits slices an edgeq (matquant) checkpoint's codes; another tool's folder has one width")
    qweights, rest, method, qconfig = read_quantized_linears(Path(path))
    state = {k: v.float() for k, v in rest.items()}  # biases of quantized linears included (float16 there)
    state.update({f"{name}.weight": qw.dequantize() for name, qw in qweights.items()})
    config = AutoConfig.from_pretrained(path)
    del config.quantization_config  # the torch model here is float; transformers must not re-apply the format
    model = _model_of_state(config, arch_of(config), state)
    model.eval()
    (bits_, group), _ = Counter((qw.bits, qw.group_size) for qw in qweights.values()).most_common(1)[0]
    meta = {"method": None, "imported_from": {"format": method, "quantization_config": qconfig},
            "bits": bits_, "group_size": group}
    return model, qweights, meta


def load_quantized(given, bits=None):
    """(model, qweights, meta) of an edgeq checkpoint or of another tool's quantized folder (io.inputs' kinds)."""
    from .checkpoint import load_checkpoint
    return load_quantized_folder(given.path, bits) if given.kind == "quantized" else load_checkpoint(given.path, bits)

"""A Hugging Face folder quantized by another tool in the GPTQ format (GPTQModel, AutoGPTQ, auto-round's
auto_gptq output, edgeq's own --format gptq), read as an edgeq checkpoint is: a float32 model with the
dequantized weights, every quantized linear's QuantizedWeight, and a meta record. `edgeq export` and `edgeq
eval` take such a folder wherever they take a checkpoint.

Read: 2, 4 and 8 bits, v1 (`checkpoint_format: gptq`, zero points stored minus one, what every tool saves) and
v2 (`gptq_v2`, stored as they are), any group size or per-channel, GPTQModel's `dynamic` per-module bits and
group sizes, a quantized lm_head. Refused in one line: act-order folders (a g_idx that reorders the columns),
3-bit packing, other quant_methods."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import EdgeqError

CHECKPOINT_FORMATS = {"gptq": 1, "gptq_v2": 0}  # checkpoint_format -> what was subtracted from each zero point


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


def is_gptq_folder(path: Path) -> bool:
    config = quantization_config(path)
    return config is not None and str(config.get("quant_method", "")).lower() == "gptq"


def module_grid(name: str, config: dict) -> tuple[int, int] | None:
    """(bits, group size) of module `name`, None where `dynamic` skips it ('-:' pattern): GPTQModel's rules, the
    first matching pattern wins."""
    for pattern, overrides in (config.get("dynamic") or {}).items():
        negative = pattern.startswith("-:")
        if re.match(pattern.removeprefix("+:").removeprefix("-:"), name):
            if negative:
                return None
            return int(overrides.get("bits", config["bits"])), int(overrides.get("group_size", config["group_size"]))
    return int(config["bits"]), int(config["group_size"])


def check_config(config: dict) -> int:
    """Refuse what is not read (one line); returns the zero-point offset of the checkpoint format."""
    fmt = str(config.get("checkpoint_format", "gptq")).lower()
    if fmt not in CHECKPOINT_FORMATS:
        raise EdgeqError(f"GPTQ checkpoint_format {fmt!r} is not read (gptq and gptq_v2 are)")
    for key in ("bits", "group_size"):
        if key not in config:
            raise EdgeqError(f"the GPTQ quantization_config has no {key}")
    return CHECKPOINT_FORMATS[fmt]


def read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise EdgeqError(f"{path}: a GPTQ folder without .safetensors weights")
    tensors = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def load_gptq_folder(path, bits=None):
    """(float32 model with the dequantized weights, {linear: QuantizedWeight}, meta), as checkpoint.load_checkpoint."""
    from transformers import AutoConfig

    from ..quant.gptq_format import qweight_from_gptq
    from .checkpoint import _model_of_state
    from .models import arch_of
    path = Path(path)
    if bits is not None:
        raise EdgeqError("--bits slices an edgeq (matquant) checkpoint's codes; a GPTQ folder has one width")
    qconfig = quantization_config(path)
    offset = check_config(qconfig)
    tensors = read_tensors(path)
    qweights = {}
    for key in [k for k in tensors if k.endswith(".qweight")]:
        name = key.removesuffix(".qweight")
        grid = module_grid(name, qconfig)
        if grid is None:
            raise EdgeqError(f"{name}: packed codes in a module the folder's dynamic field skips")
        if offset == 0:  # v2 stores the zero points as they are; the reader expects v1's minus one
            tensors = {**tensors, f"{name}.qzeros": _v2_to_v1_zeros(tensors[f"{name}.qzeros"], grid[0])}
        qweights[name] = qweight_from_gptq(tensors, name, *grid)
    if not qweights:
        raise EdgeqError(f"{path}: quant_method gptq but no .qweight tensor")
    packed = {f"{name}.{part}" for name in qweights for part in ("qweight", "qzeros", "scales", "g_idx")}
    state = {k: v.float() for k, v in tensors.items() if k not in packed and v.is_floating_point()}
    state.update({f"{name}.weight": qw.dequantize() for name, qw in qweights.items()})
    for name in qweights:  # a quantized linear's bias stays (float16 in the folder)
        if f"{name}.bias" in tensors:
            state[f"{name}.bias"] = tensors[f"{name}.bias"].float()
    config = AutoConfig.from_pretrained(path)
    del config.quantization_config  # the torch model here is float; transformers must not re-apply GPTQ
    model = _model_of_state(config, arch_of(config), state)
    model.eval()
    meta = {"method": None, "imported_from": {"format": "gptq", "quantization_config": qconfig},
            "bits": int(qconfig["bits"]), "group_size": int(qconfig["group_size"])}
    return model, qweights, meta


def _v2_to_v1_zeros(qzeros, bits: int):
    import torch

    from ..quant.gptq_format import pack_rows, unpack_rows
    zero = unpack_rows(qzeros.numpy().T, bits)
    return torch.from_numpy(pack_rows((zero.astype("int64") - 1) & ((1 << bits) - 1), bits).T.copy())


def load_quantized(given, bits=None):
    """(model, qweights, meta) of an edgeq checkpoint or of another tool's GPTQ folder (io.inputs' kinds)."""
    from .checkpoint import load_checkpoint
    return load_gptq_folder(given.path, bits) if given.kind == "gptq" else load_checkpoint(given.path, bits)

"""One reader per quantization format other tools write into a Hugging Face folder: each takes the folder's
quantization_config and its tensors and returns ({linear: QuantizedWeight}, the tensor names it consumed).
io/quantized_folder.py picks the reader from quant_method; the packings themselves live in quant/*_format.py.

    gptq                GPTQModel, AutoGPTQ, auto-round's auto_gptq, edgeq's --format gptq (v1 and v2 zero points,
                        GPTQModel's `dynamic` per-module bits and groups)
    awq                 AutoAWQ and auto-round's auto_awq (GEMM packing, 4 bits)
    compressed-tensors  llm-compressor and auto-round's llm_compressor (pack-quantized, group / channel / tensor,
                        symmetric and asymmetric, any width 2-8)
    auto-round          auto-round's own format: its packing_format names the GPTQ or AWQ packing, and
                        extra_config the layers off the main scheme
"""
from __future__ import annotations

import re

from ..errors import EdgeqError

GPTQ_ZERO_OFFSETS = {"gptq": 1, "gptq_v2": 0}  # checkpoint_format -> what was subtracted from each zero point
GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
COMPRESSED_PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


def _needs(config: dict, *keys: str, what: str) -> None:
    for key in keys:
        if key not in config:
            raise EdgeqError(f"the {what} quantization_config has no {key}")


def _packed(qweights: dict, parts) -> set[str]:
    return {f"{name}.{part}" for name in qweights for part in parts}


def _linears(tensors: dict, suffix: str) -> list[str]:
    return [key.removesuffix(suffix) for key in tensors if key.endswith(suffix)]


def gptq_module_grid(name: str, config: dict) -> tuple[int, int] | None:
    """(bits, group size) of module `name`, None where `dynamic` skips it ('-:' pattern): GPTQModel's rules, the
    first matching pattern wins."""
    for pattern, overrides in (config.get("dynamic") or {}).items():
        if re.match(pattern.removeprefix("+:").removeprefix("-:"), name):
            if pattern.startswith("-:"):
                return None
            return int(overrides.get("bits", config["bits"])), int(overrides.get("group_size", config["group_size"]))
    return int(config["bits"]), int(config["group_size"])


def read_gptq(config: dict, tensors: dict, grid_of=gptq_module_grid):
    from ..quant.gptq_format import qweight_from_gptq
    fmt = str(config.get("checkpoint_format", "gptq")).lower()
    if fmt not in GPTQ_ZERO_OFFSETS:
        raise EdgeqError(f"GPTQ checkpoint_format {fmt!r} is not read (gptq and gptq_v2 are)")
    _needs(config, "bits", "group_size", what="GPTQ")
    qweights = {}
    for name in _linears(tensors, ".qweight"):
        grid = grid_of(name, config)
        if grid is None:
            raise EdgeqError(f"{name}: packed codes in a module the folder's config leaves unquantized")
        qweights[name] = qweight_from_gptq(tensors, name, *grid, zero_offset=GPTQ_ZERO_OFFSETS[fmt])
    return qweights, _packed(qweights, GPTQ_PARTS)


def read_awq(config: dict, tensors: dict, grid_of=None):
    from ..quant.awq_format import qweight_from_awq
    version = str(config.get("version", "gemm")).lower()
    if version != "gemm":
        raise EdgeqError(f"AWQ version {version!r} is not read (gemm is)")
    _needs(config, "bits", "group_size", what="AWQ")
    grid_of = grid_of or (lambda name, c: (int(c["bits"]), int(c["group_size"])))
    qweights = {name: qweight_from_awq(tensors, name, *grid_of(name, config))
                for name in _linears(tensors, ".qweight")}
    return qweights, _packed(qweights, GPTQ_PARTS)


def compressed_weights_of(name: str, config: dict) -> dict | None:
    """The weights entry of the config group whose targets name this linear ('Linear', 're:PATTERN', a name or
    a name's tail), None where `ignore` names it."""
    def names(target: str) -> bool:
        if target.startswith("re:"):
            return re.match(target[3:], name) is not None
        return target == "Linear" or name == target or name.endswith("." + target)
    if any(names(target) for target in config.get("ignore") or []):
        return None
    for label, group in (config.get("config_groups") or {}).items():
        if any(names(target) for target in group.get("targets", [])):
            if str(group.get("format") or config.get("format")) != "pack-quantized":
                raise EdgeqError(f"compressed-tensors format {group.get('format') or config.get('format')!r} "
                                 "is not read (pack-quantized is)")
            if group.get("input_activations"):
                raise EdgeqError(f"compressed-tensors {label} quantizes activations too; edgeq reads weight-only "
                                 "schemes (W4A16, W8A16 ...)")
            return group["weights"]
    return None


def read_compressed(config: dict, tensors: dict):
    from ..quant.compressed_format import qweight_from_compressed
    status = str(config.get("quantization_status", "compressed"))
    if status != "compressed":
        raise EdgeqError(f"a compressed-tensors folder in status {status!r}: its weights are not packed")
    qweights = {}
    for name in _linears(tensors, ".weight_packed"):
        weights = compressed_weights_of(name, config)
        if weights is None:
            raise EdgeqError(f"{name}: packed codes in a module no config group targets")
        if str(weights.get("type", "int")) != "int":
            raise EdgeqError(f"{name}: compressed-tensors {weights.get('type')} weights are not read (int are)")
        qweights[name] = qweight_from_compressed(tensors, name, weights)
    return qweights, _packed(qweights, COMPRESSED_PARTS)


def auto_round_grid(name: str, config: dict) -> tuple[int, int] | None:
    """auto-round's extra_config: a layer's own bits / group_size, by its name or a pattern."""
    extra = config.get("extra_config") or {}
    own = extra.get(name) or next((v for k, v in extra.items() if _is_pattern(k) and re.search(k, name)), {})
    bits, group = int(own.get("bits") or config["bits"]), int(own.get("group_size") or config["group_size"])
    return None if bits >= 16 else (bits, group)


def _is_pattern(key: str) -> bool:
    return any(c in key for c in "*^$[]()+?\\")


def read_auto_round(config: dict, tensors: dict):
    packing = str(config.get("packing_format", "auto_round:auto_gptq"))
    _needs(config, "bits", "group_size", what="auto-round")
    if packing in ("auto_round:auto_gptq", "auto_round:gptqmodel"):
        return read_gptq({**config, "checkpoint_format": "gptq"}, tensors, auto_round_grid)
    if packing == "auto_round:auto_awq":
        return read_awq({**config, "version": "gemm"}, tensors, auto_round_grid)
    raise EdgeqError(f"auto-round packing_format {packing!r} is not read (auto_round:auto_gptq and "
                     "auto_round:auto_awq are)")


READERS = {"gptq": read_gptq, "awq": read_awq, "compressed-tensors": read_compressed, "auto-round": read_auto_round}

"""Quantized checkpoints: a folder with model.safetensors (packed codes, scales, packed zero points per
linear, plus the float tensors left unquantized), quantization.json, config.json and the tokenizer.

Written into a hidden temporary folder beside the destination and renamed at the end, so an interrupted
or failed write never leaves a half checkpoint under the requested name.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..quant import pack
from ..errors import EdgeqError
from ..util.paths import atomic_folder  # noqa: F401  (the checkpoint's writes go through it)
from ..quant.qweight import QuantizedWeight
from .head import FINAL_MIX, attach_final_mix

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "quantization.json"


def qweights_to_tensors(qweights: dict[str, QuantizedWeight]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, qw in qweights.items():
        if qw.input_order is not None:  # only another tool's act-order folder holds one; the format has no field
            raise EdgeqError(f"{name}: an act-order weight (input_order) has no edgeq checkpoint layout")
        tensors[f"{name}.qweight"] = torch.from_numpy(pack.pack_blocks(qw.q.numpy(), qw.bits, qw.group_size))
        tensors[f"{name}.scales"] = qw.scale.contiguous()
        tensors[f"{name}.qzeros"] = torch.from_numpy(pack.pack_codes(qw.zero.numpy(), qw.bits))
    return tensors


def qweights_to_tensors_names(layout) -> list[str]:
    return [f"{name}.{part}" for name in layout for part in ("qweight", "scales", "qzeros")]


def qweights_layout(qweights: dict[str, QuantizedWeight]) -> dict[str, dict]:
    return {name: {"bits": qw.bits, "group_size": qw.group_size, "shape": list(qw.shape)}
            for name, qw in qweights.items()}


@dataclass
class PackedCodes:
    """Quantized linears as a checkpoint stores them (packed codes, scales, packed zero points) with their
    layout. The resume folder holds every finished block so: written into the checkpoint as they are, the
    codes are not unpacked to a byte each and packed again at the end of a run (a 1.5B model's codes are
    1.3 GB unpacked, 0.65 GB packed, and both were alive at once while the checkpoint was saved)."""
    tensors: dict[str, torch.Tensor]
    layout: dict[str, dict]

    @classmethod
    def of(cls, qweights: dict[str, QuantizedWeight]) -> "PackedCodes":
        return cls(qweights_to_tensors(qweights), qweights_layout(qweights))

    def update(self, other: "PackedCodes") -> None:
        self.tensors.update(other.tensors)
        self.layout.update(other.layout)

    def unpacked(self) -> dict[str, QuantizedWeight]:
        return qweights_from_tensors(self.tensors, self.layout)


def packed_shapes(info: dict) -> dict[str, tuple[int, ...]]:
    """The exact shapes of one linear's stored tensors under its layout entry (bits, group size, shape)."""
    (n, k), bits, gs = info["shape"], info["bits"], info["group_size"]
    groups = -(-k // gs)
    return {"qweight": (n, groups, pack.packed_length(gs, bits)), "scales": (n, groups),
            "qzeros": (n, pack.packed_length(groups, bits))}


def check_packed_shapes(tensors: dict[str, torch.Tensor], name: str, info: dict) -> None:
    """Codes read under the wrong width unpack without error into wrong weights, so sizes must match exactly."""
    for part, shape in packed_shapes(info).items():
        got = tuple(tensors[f"{name}.{part}"].shape)
        if got != shape:
            raise ValueError(f"{part} is {list(got)}, but {info['bits']}-bit codes in groups of "
                             f"{info['group_size']} of a {info['shape']} weight are {list(shape)}")


def qweights_from_tensors(tensors: dict[str, torch.Tensor], layout: dict[str, dict]) -> dict[str, QuantizedWeight]:
    qweights = {}
    for name, info in layout.items():
        n, k = info["shape"]
        bits, gs = info["bits"], info["group_size"]
        try:
            check_packed_shapes(tensors, name, info)
            q = pack.unpack_blocks(tensors[f"{name}.qweight"].numpy(), bits, gs, k)
            zero = pack.unpack_codes(tensors[f"{name}.qzeros"].numpy(), bits, -(-k // gs))
            qweights[name] = QuantizedWeight(torch.from_numpy(np.ascontiguousarray(q)),
                                             tensors[f"{name}.scales"].float().contiguous(),
                                             torch.from_numpy(zero), bits, gs)
        except (KeyError, ValueError) as err:
            raise EdgeqError(f"checkpoint tensors for {name} are missing or malformed: {err}") from None
    return qweights


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """A safetensors file, the same bytes for the same tensors (sorted header), written a chunk at a time."""
    from .safetensors_write import write_safetensors
    write_safetensors(path, tensors, metadata)


def save_tensor_file(path: Path, tensor: torch.Tensor) -> None:
    """One tensor to a file, written beside it and renamed: never half a file. safetensors, not torch.save:
    a pickle found on disk would be code run on load (or, with torch's weights_only default, a traceback)."""
    tmp = path.with_name(path.name + ".tmp")
    save_tensors(tmp, {"tensor": tensor})
    os.replace(tmp, path)


def load_tensor_file(path: Path) -> torch.Tensor:
    return load_tensors(path)["tensor"]


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors_and_metadata(path)[0]


def load_tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and its header's metadata, from one opening of the file."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except FileNotFoundError:
        raise EdgeqError(f"missing file: {path}") from None
    except Exception as err:  # safetensors raises its own error types for truncated/garbled files
        raise EdgeqError(f"{path} is corrupted or not a safetensors file: {err}") from None


def unquantized_state(model, quantized_linears) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer except the quantized weights and what is tied to them (an
    embedding sharing a quantized head's codes); other tied tensors stored once."""
    full = model.state_dict()
    skip = {f"{name}.weight" for name in quantized_linears}
    quantized = {full[key].data_ptr() for key in skip if key in full}
    seen, state = set(), {}
    for key, tensor in full.items():
        if key in skip or tensor.data_ptr() in seen | quantized:
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor
    return state


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (read a chunk at a time, so a
    mapped float table is not made resident whole)."""
    import hashlib

    from .safetensors_write import byte_chunks
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        for chunk in byte_chunks(t):
            digest.update(chunk)
    return digest.hexdigest()


def layout_json(layout: dict) -> str:
    return json.dumps(layout, sort_keys=True, separators=(",", ":"))


def save_checkpoint(destination: Path, model, tokenizer, packed: PackedCodes, meta: dict):
    """The tensors carry their own layout (in the safetensors header) and quantization.json their digest,
    so that load_checkpoint notices either file edited, swapped or corrupted."""
    tensors = dict(packed.tensors)
    tensors.update(unquantized_state(model, packed.layout))
    layout = packed.layout
    full_meta = {"format_version": FORMAT_VERSION, **meta, "layers": layout,
                 "tensors_sha256": tensors_digest(tensors)}
    with atomic_folder(destination) as tmp:
        save_tensors(tmp / WEIGHTS_FILE, tensors, {"format": "edgeq", "format_version": str(FORMAT_VERSION),
                                                   "edgeq_layout": layout_json(layout)})
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2) + "\n")
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def is_checkpoint(path) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise EdgeqError(f"cannot read {Path(path) / META_FILE}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise EdgeqError(f"{path}: checkpoint format {version} is not {FORMAT_VERSION}")
    if not isinstance(meta.get("layers"), dict):
        raise EdgeqError(f"{Path(path) / META_FILE} has no 'layers' table: not a complete edgeq checkpoint")
    return meta


def verify_integrity(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """quantization.json's layers against the layout saved with the tensors, then the tensors against the
    digest saved in quantization.json. A quantization.json without its digest is refused: it could sit beside
    any checkpoint's weights (the layout check alone passes for two runs of one grid)."""
    from safetensors import safe_open
    with safe_open(str(path / WEIGHTS_FILE), "pt") as f:
        saved = (f.metadata() or {}).get("edgeq_layout")
    theirs = json.loads(saved) if saved is not None else meta["layers"]
    if theirs != meta["layers"]:
        name = next(n for n in sorted(set(theirs) | set(meta["layers"])) if theirs.get(n) != meta["layers"].get(n))
        raise EdgeqError(f"{path}: {META_FILE} says {name} is {meta['layers'].get(name)}, but its tensors were "
                         f"saved as {theirs.get(name)}: the file was edited or belongs to another checkpoint")
    expected = meta.get("tensors_sha256")
    if not isinstance(expected, str):
        raise EdgeqError(f"{path}: {META_FILE} has no tensors_sha256, so its weights cannot be verified; "
                         "quantize the model again")
    if tensors_digest(tensors) != expected:
        raise EdgeqError(f"{path}: {WEIGHTS_FILE} does not match the digest in {META_FILE}: the tensors are "
                         "corrupted or from another checkpoint")


def load_checkpoint(path, bits: int | float | None = None):
    """(model with dequantized weights, {linear: QuantizedWeight}, meta). The model is float32, eval mode.
    With `bits`, every quantized linear is the `bits`-bit slice of its codes (MatQuant checkpoints); a
    float is an average (Mix'n'Match): each linear group's width from the stored slice estimates."""
    from transformers import AutoConfig

    from .models import arch_of
    path = Path(path)
    if not is_checkpoint(path):
        raise EdgeqError(f"not an edgeq checkpoint (no {META_FILE}): {path}")
    meta = read_meta(path)
    tensors = load_tensors(path / WEIGHTS_FILE)
    verify_integrity(path, tensors, meta)
    qweights = qweights_from_tensors(tensors, meta["layers"])
    config = AutoConfig.from_pretrained(path)
    arch = arch_of(config)
    if bits is not None:  # the block linears' codes; a calibrated head is not nested
        blocks = [name for name in qweights if name != arch.lm_head]
        widths = slice_plan(meta, config, bits) if isinstance(bits, float) else dict.fromkeys(blocks, bits)
        qweights = {name: qw.slice(widths[name]) if name in widths else qw for name, qw in qweights.items()}
    packed = set(qweights_to_tensors_names(meta["layers"]))
    state = {k: v for k, v in tensors.items() if k not in packed}
    del tensors  # the packed codes live on in qweights only
    state.update({f"{name}.weight": qw.dequantize() for name, qw in qweights.items()})
    model = _model_of_state(config, arch, state)
    model.eval()
    return model, qweights, meta


def _model_of_state(config, arch, state: dict[str, torch.Tensor]):
    """The model with `state`'s tensors as its weights (assigned, not copied: no second copy of the model)."""
    from .models import empty_model, rebuild_non_weights
    # a tied pair is stored once: the float table, or (a quantized head) the head's codes alone
    tied = (f"{arch.lm_head}.weight", f"{arch.embed}.weight") if getattr(config, "tie_word_embeddings", False) \
        else ()
    stored = [key for key in tied if key in state]
    for key in tied:
        if stored:
            state.setdefault(key, state[stored[0]])
    mix = state.pop(f"{arch.final_norm}.{FINAL_MIX}", None)  # a rotated model's tied head (io/head.py)
    model = empty_model(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise EdgeqError(f"checkpoint does not match its config: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    rebuild_non_weights(model, arch)
    if mix is not None:
        attach_final_mix(model, arch, mix)
    return model


def slice_plan(meta: dict, config, budget: float) -> dict[str, int]:
    """{linear: width} of a nested checkpoint for an average of `budget` code bits (Mix'n'Match), one width
    per group of linears sharing an input, as the device plans it from the export (mixnmatch.py)."""
    from ..planning import mixnmatch
    groups, units = slice_units(meta, config)
    per_unit = mixnmatch.plan(units, meta["slice_estimates"]["widths"], budget)
    return {name: per_unit[group[0]] for group in groups for name in group}


def slice_units(meta: dict, config) -> tuple[list[list[str]], dict[str, tuple]]:
    """(the groups of linears sharing an input, block by block; mixnmatch units named after each group's
    first linear) of a checkpoint with slice estimates."""
    from ..planning import mixnmatch
    from .models import arch_of
    record = meta.get("slice_estimates")
    if not record:
        raise EdgeqError("this checkpoint has no slice estimates: a budget needs a nested (matquant, matround) "
                         "checkpoint quantized by this edgeq; slice it to one width with an integer --bits")
    arch = arch_of(config)
    sizes = {name: info["shape"][0] * info["shape"][1] for name, info in meta["layers"].items()}
    groups = [[f"{arch.blocks}.{i}.{n}" for n in group]
              for i in range(config.num_hidden_layers) for group in arch.input_groups]
    return groups, mixnmatch.group_units(record["layers"], sizes, groups)

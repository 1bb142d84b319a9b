"""`edgeq export CKPT --format gguf --out model.gguf`: an edgeq checkpoint as a GGUF file llama.cpp runs, for the
grids that map onto llama.cpp's block types exactly, so a model calibrated by GPTQ (or any edgeq method) runs in
llama.cpp and everything built on it:
- 4-bit symmetric, group 32 -> Q4_0: w = d (q - 8), d the scale (edgeq's symmetric zero point is 8);
- 4-bit asymmetric, group 32 -> Q4_1: w = d q + m, m = -d z;
- 8-bit symmetric, group 32 -> Q8_0: w = d (q - 128), stored as the int8 q - 128.
The codes and zero points map exactly; d and m are stored in float16 (what is lost: each is rounded once, and
the export reports the largest change of a weight). Any other grid is refused in one line, naming the linear.

What a GGUF holds besides the weights (the tokenizer, the hyperparameters, the chat template) is copied from
a GGUF of the same float model (`--gguf-base`; the bundled model's own GGUF by default for a checkpoint made
from it): the gguf library reads and writes the container, edgeq writes only the block bytes, which no library
builds from given codes (gguf.quants quantizes floats itself). The norms are written in float32 and the
embedding as the base's own tensor where the checkpoint's equals it (its de-quantization), else in Q8_0.
llama.cpp's converter stores q and k with each head's rotary halves interleaved (convert_hf_to_gguf.py's
permute), so their rows are permuted the same way; every written tensor is read back through the gguf
library's de-quantizer against the checkpoint's weights before the file appears.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgeqError
from ..quant.qweight import QuantizedWeight
from .gptq import is_symmetric

BLOCK = 32
# (bits, symmetric) -> llama.cpp block type name (gguf.GGMLQuantizationType), and its file type
TYPES = {(4, True): "Q4_0", (4, False): "Q4_1", (8, True): "Q8_0"}
FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_*
ARCHITECTURES = ("llama",)  # general.architecture values whose tensors edgeq names and permutes


def block_type(name: str, qw: QuantizedWeight) -> str:
    symmetric = is_symmetric(qw)
    kind = TYPES.get((qw.bits, symmetric))
    if qw.input_order is not None:
        raise EdgeqError(f"{name}: its groups follow an act-order g_idx (desc_act), and GGUF's blocks are 32 "
                         "consecutive inputs; export it to ONNX, or re-quantize with desc_act false")
    if qw.group_size != BLOCK or kind is None:
        grids = ", ".join(f"{bits}-bit {'symmetric' if sym else 'asymmetric'}" for bits, sym in TYPES)
        raise EdgeqError(f"{name} is {qw.bits}-bit {'symmetric' if symmetric else 'asymmetric'} in groups of "
                         f"{qw.group_size}: GGUF's exact block types are groups of {BLOCK} at {grids} "
                         "(quantize with --group-size 32, and --sym for Q4_0 / Q8_0)")
    return kind


def pack_blocks(qw: QuantizedWeight, kind: str) -> np.ndarray:
    """The rows' blocks as llama.cpp lays them out: uint8 [N, K / 32 * block bytes]."""
    n, k = qw.q.shape
    q = qw.q.numpy().reshape(n, k // BLOCK, BLOCK)
    d = qw.scale.numpy().astype(np.float16).reshape(n, -1, 1).view(np.uint8)  # [N, G, 2]
    if kind == "Q8_0":
        return np.concatenate([d, (q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)], axis=2).reshape(n, -1)
    nibbles = (q[..., :BLOCK // 2] | (q[..., BLOCK // 2:] << 4)).astype(np.uint8)  # byte j: q[j], q[j + 16]
    if kind == "Q4_0":
        return np.concatenate([d, nibbles], axis=2).reshape(n, -1)
    m = (-(qw.scale * qw.zero.float())).numpy().astype(np.float16).reshape(n, -1, 1).view(np.uint8)
    return np.concatenate([d, m, nibbles], axis=2).reshape(n, -1)


def rotary_row_order(rows: int, heads: int) -> torch.Tensor:
    """The row order llama.cpp's converter gives q (heads = attention heads) and k (kv heads)."""
    return torch.arange(rows).reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)


def permuted(qw: QuantizedWeight, order: torch.Tensor) -> QuantizedWeight:
    return QuantizedWeight(qw.q[order], qw.scale[order], qw.zero[order], qw.bits, qw.group_size)


def base_gguf(meta: dict, given: str | None) -> Path:
    from ..io import models
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise EdgeqError(f"--gguf-base: no such file: {given}")
        return path
    bundled = models.bundled_source()
    if meta.get("base_model") == bundled.label:
        return bundled.folder / bundled.gguf_file
    raise EdgeqError("--format gguf copies the tokenizer and hyperparameters of a GGUF of the same float model: "
                     "give --gguf-base FILE (e.g. made by llama.cpp's convert_hf_to_gguf.py)")


def gguf_name(name_map, hf_name: str) -> str:
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise EdgeqError(f"no GGUF name for {hf_name}")
    return mapped


class BaseFile:
    """The base GGUF: its metadata fields and its tensors by name."""

    def __init__(self, path: Path):
        import gguf
        self.path, self.reader = path, gguf.GGUFReader(str(path))
        self.arch = str(self.field("general.architecture"))
        if self.arch not in ARCHITECTURES:
            raise EdgeqError(f"{path}: --format gguf writes {', '.join(ARCHITECTURES)} models, not {self.arch}")
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, name: str):
        field = self.reader.get_field(name)
        if field is None:
            raise EdgeqError(f"{self.path} has no {name}")
        return field.contents()


def float_tensor(base: BaseFile, name: str, value: torch.Tensor):
    """(bytes or array, raw type) of a tensor that stays float: the base's own where equal (its de-quantization),
    float32 for vectors, Q8_0 for a changed table."""
    import gguf
    from gguf.quants import dequantize, quantize
    array = value.detach().float().numpy()
    own = base.tensors.get(name)
    if own is not None and tuple(own.shape[::-1].tolist()) == array.shape:
        if np.array_equal(dequantize(own.data, own.tensor_type).reshape(array.shape).astype(np.float32), array):
            return np.asarray(own.data), own.tensor_type
    if array.ndim == 1:
        return array, gguf.GGMLQuantizationType.F32
    return quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def quantized_tensors(model, qweights: dict[str, QuantizedWeight], kinds: dict[str, str], name_map) -> dict:
    """{GGUF name: (block bytes, type, the checkpoint's weight as written)} of every quantized linear, each of
    block type kinds[name]."""
    import gguf
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    out = {}
    for name, qw in qweights.items():
        kind = kinds[name]
        if name.endswith("q_proj") or name.endswith("k_proj"):
            qw = permuted(qw, rotary_row_order(qw.q.shape[0], heads if name.endswith("q_proj") else kv_heads))
        out[gguf_name(name_map, name + ".weight")] = (pack_blocks(qw, kind), gguf.GGMLQuantizationType[kind],
                                                      qw.dequantize())
    return out


def check_read_back(written: dict, limit: float = 2e-3) -> float:
    """Every linear through gguf's own de-quantizer against the checkpoint's weight; the largest relative error."""
    from gguf.quants import dequantize
    worst = 0.0
    for name, (data, kind, exact) in written.items():
        back = torch.from_numpy(dequantize(data, kind).reshape(exact.shape).astype(np.float32))
        error = float((back - exact).norm() / exact.norm().clamp(min=1e-30))
        if not error <= limit:
            raise EdgeqError(f"{name}: the written blocks read back {error:.1e} away from the checkpoint's codes")
        worst = max(worst, error)
    return worst


def write_file(out: Path, base: BaseFile, tensors: dict, file_type: int) -> None:
    import gguf
    writer = gguf.GGUFWriter(str(out), base.arch)
    for field in base.reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type",
                                                             "general.alignment"):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_file_type(file_type)
    for name, (data, kind) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(model: str, out, *, gguf_base: str | None = None) -> dict:
    """Write `out` (a .gguf file) from an edgeq checkpoint; nothing is left at `out` if any check fails."""
    import gguf
    from collections import Counter
    from ..io.head import final_mix
    from ..io.models import arch_of
    from .onnx import load_for_export
    out = Path(out)
    if out.exists():
        raise EdgeqError(f"{out} exists: give a new file")
    loaded, _, qweights, label, meta = load_for_export(model, False, None)
    arch = arch_of(loaded.config)
    if arch.lm_head in qweights or final_mix(loaded, arch) is not None:
        raise EdgeqError(f"{model}: --format gguf writes a float (tied) head without a matrix after the final norm; "
                         "quantize without --lm-head and --transform rotate")
    kinds = {name: block_type(name, qw) for name, qw in qweights.items()}  # refused before anything is read
    base = BaseFile(base_gguf(meta, gguf_base))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, loaded.config.num_hidden_layers)
    written = quantized_tensors(loaded, qweights, kinds, name_map)
    readback = check_read_back(written)
    tensors = {name: (data, kind) for name, (data, kind, _) in written.items()}
    skip = {f"{name}.weight" for name in qweights} | ({f"{arch.lm_head}.weight"} if loaded.config.tie_word_embeddings else set())
    for hf_name, value in loaded.state_dict().items():
        if hf_name not in skip:
            name = gguf_name(name_map, hf_name)
            tensors[name] = float_tensor(base, name, value)
    if set(base.tensors) != set(tensors):
        differ = sorted(set(base.tensors) ^ set(tensors))
        raise EdgeqError(f"{base.path} is not the checkpoint's model: tensors {differ[:3]} are in one only")
    main = Counter(kinds.values()).most_common(1)[0][0]
    tmp = out.with_name(out.name + ".partial")
    try:
        write_file(tmp, base, {name: tensors[name] for name in base.tensors}, FILE_TYPES[main])  # the base's order
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"format": "gguf", "source": label, "method": meta.get("method"), "types": dict(Counter(kinds.values())),
            "readback_relative_error": readback, "bytes": out.stat().st_size, "base": str(base.path)}

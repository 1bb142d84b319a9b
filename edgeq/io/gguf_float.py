"""A GGUF file de-quantized to float32 safetensors one block at a time.

transformers' GGUF loading (from_pretrained(gguf_file=...)) de-quantizes every tensor into one state dict
and then builds the model: about 2 x the fp32 model in memory (7 GB of fp32 for Qwen2.5-1.5B, over 12 GB
peak), more than the laptops edgeq is for. Here the same pieces of transformers (its GGUF config and
tokenizer readers, its GGUF -> Hugging Face tensor name map, its per-architecture tensor processors, so
the q/k un-permutation and Gemma's norm offset are theirs) run one tensor at a time, and each block is
written to a safetensors shard of its own (the standard sharded layout with model.safetensors.index.json)
as soon as it is complete, so peak memory is one block, or one table outside the blocks.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import EdgeqError
from .architectures import arch_of
from .safetensors_scan import INDEX

_BLOCK = re.compile(r"^blk\.(\d+)\.")


def shard_key(gguf_name: str) -> str:
    """Tensors of one block share a shard; a tensor outside the blocks (the embedding, the head: each up to
    a gigabyte) gets one of its own."""
    match = _BLOCK.match(gguf_name)
    return f"block{int(match.group(1)):04d}" if match else gguf_name


def convert(gguf_path: Path, out: Path) -> None:
    """Write config.json, the tokenizer and float32 shards of the GGUF's tensors into `out` (an empty,
    existing folder)."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .safetensors_write import write_safetensors
    from ..util.progress import progress_bar
    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config.dtype = torch.float32  # de-quantized: what we store is a float model
    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reader = GGUFReader(str(gguf_path))
    names, processor = _name_map(reader, gguf_path, meta_model)
    shards: dict[str, list] = {}
    for tensor in reader.tensors:
        if tensor.name in names:
            shards.setdefault(shard_key(tensor.name), []).append(tensor)
    weight_map = {}
    keys = sorted(shards)
    for number, key in enumerate(progress_bar(keys, desc="de-quantizing the GGUF", unit="shard"), start=1):
        file = f"model-{number:05d}-of-{len(keys):05d}.safetensors"
        state = {names[t.name]: _float_tensor(t, processor) for t in shards[key]}
        write_safetensors(out / file, state, {"format": "pt"})
        weight_map.update(dict.fromkeys(state, file))
        del state
    _check_complete(meta_model, weight_map, gguf_path)
    (out / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict(sorted(weight_map.items()))},
                                        indent=2))
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(out)


def _name_map(reader, gguf_path: Path, meta_model) -> tuple[dict[str, str], object]:
    """(GGUF tensor name -> Hugging Face parameter name, the architecture's tensor processor), both made
    by transformers' own GGUF loader from the file's metadata."""
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, load_gguf_checkpoint,
                                                          read_field)
    architecture = read_field(reader, "general.architecture")[0]
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    return get_gguf_hf_weights_map(meta_model, processor), processor


def _float_tensor(tensor, processor, chunk_rows: int = 4096):
    """One GGUF tensor de-quantized, through its architecture's processor, as a float32 torch tensor.
    De-quantized a slab of rows at a time into the one output array: gguf's numpy de-quantizers make
    several temporaries the size of their input (a 1 GB embedding would need 3-4 GB at once)."""
    import numpy as np
    import torch
    from gguf import dequantize
    rows = tensor.data.shape[0]
    out = None
    for start in range(0, rows, chunk_rows):
        part = dequantize(tensor.data[start:start + chunk_rows], tensor.tensor_type)
        if not np.isfinite(part).all():
            raise EdgeqError(f"the model has NaN or infinite weights in {tensor.name}; refusing to quantize it")
        if out is None:
            out = np.empty((rows, *part.shape[1:]), dtype=np.float32)
        out[start:start + chunk_rows] = part
    weights = processor.process(weights=out, name=tensor.name).weights  # a view, or a small tensor's copy
    return torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))


def _check_complete(meta_model, weight_map: dict[str, str], gguf_path: Path) -> None:
    """Every parameter the model needs is in the shards (a tied head is the embedding's)."""
    head = arch_of(meta_model.config).lm_head + ".weight"
    tied = {head} if meta_model.config.tie_word_embeddings else set()
    missing = [name for name, _ in meta_model.named_parameters(remove_duplicate=False)
               if name not in weight_map and name not in tied]
    if missing:
        raise EdgeqError(f"{gguf_path} holds no tensor for {missing[0]} ({len(missing)} parameters missing)")

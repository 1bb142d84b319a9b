"""One pass over a float model before anything is computed, so that a broken model is one line, not a traceback
blocks later (or, worse, a silent success): the GGUF's magic and tensor table; the config's sizes present
and consistent; every tensor the architecture needs present, floating point and of the expected shape; no
tensor it does not know; weights that are safetensors, never a pickle; a tokenizer beside them.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgeqError
from .hub import PICKLE_SUFFIXES

FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
# tensors some writers store that are computed, never parameters (older Llama saves kept the rotary table)
DERIVED = ("rotary_emb.inv_freq",)


def check_gguf(path: Path) -> None:
    """A file that gguf's reader opens whole: magic, header, and a tensor table that fits in the file."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise EdgeqError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    from gguf import GGUFReader
    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # gguf raises ValueError, struct.error, IndexError... on a cut or garbled file
        raise EdgeqError(f"{path} is truncated or corrupted: {type(err).__name__}: {err}") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise EdgeqError(f"{path} is truncated: tensor {tensor.name} ends past the end of the file")


def check_config(folder: Path) -> dict:
    """config.json read as JSON, with positive sizes that fit together (what transformers would otherwise
    default silently, such as 32 layers, or refuse with a traceback)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EdgeqError(f"cannot read {folder / 'config.json'}: {err}") from None
    if not isinstance(config, dict):
        raise EdgeqError(f"{folder / 'config.json'} is not a JSON object")
    from .models import arch_of_type
    arch_of_type(config.get("model_type"))  # before the sizes: another family's config has other fields
    for field in SIZES:
        value = config.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EdgeqError(f"{folder / 'config.json'}: {field} must be a positive integer, got {value!r}")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads:
        raise EdgeqError(f"{folder / 'config.json'}: num_key_value_heads ({kv_heads!r}) must divide "
                         f"num_attention_heads ({heads})")
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise EdgeqError(f"{folder / 'config.json'}: hidden_size {config['hidden_size']} is not a multiple of "
                         f"num_attention_heads {heads} (and no head_dim is given)")
    return config


def check_weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file; a folder with pickles only is refused without opening them."""
    from .models import weight_files
    files = weight_files(folder)
    if files is not None:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise EdgeqError(f"{folder} has only pickled weights ({pickles[0]}); edgeq never loads pickles: convert "
                         "them to safetensors (transformers: model.save_pretrained(out, safe_serialization=True))")
    raise EdgeqError(f"{folder} has no model.safetensors or model.safetensors.index.json")


def check_tensors(config, files: dict[str, Path], where: Path) -> None:
    """Every parameter the architecture needs is stored, floating point, with its shape; nothing else is."""
    from .models import empty_model
    from .safetensors_scan import header
    stored = {}
    for file in sorted(set(files.values())):
        meta, _ = header(file)
        stored.update({name: meta[name] for name in meta if files.get(name) == file})
    parameters = list(empty_model(config).named_parameters(remove_duplicate=False))
    expected = {name: tuple(p.shape) for name, p in parameters}
    stored_ids = {id(p) for name, p in parameters if name in stored}  # a tied head is stored as the embedding
    missing = [name for name, p in parameters if name not in stored and id(p) not in stored_ids]
    if missing:
        raise EdgeqError(f"{where}: no tensor for {missing[0]} ({len(missing)} of the model's parameters missing)")
    unknown = [name for name in stored if name not in expected and not name.endswith(DERIVED)]
    if unknown:
        raise EdgeqError(f"{where}: tensor {unknown[0]} is not a parameter of this {config.model_type} model "
                         f"({config.num_hidden_layers} layers); the weights do not match config.json")
    for name, info in stored.items():
        if name not in expected:
            continue
        if info["dtype"] not in FLOAT_DTYPES:
            raise EdgeqError(f"{where}: {name} is stored as {info['dtype']}, not floating point: a quantized or "
                             "damaged model (edgeq quantizes float weights)")
        if tuple(info["shape"]) != expected[name]:
            raise EdgeqError(f"{where}: {name} has shape {tuple(info['shape'])}, config.json implies {expected[name]}")


def check_tokenizer(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise EdgeqError(f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES)})")


def check_float_source(source) -> None:
    """The whole pass over a models.ModelSource: its GGUF file, or its folder's config, weights and tokenizer."""
    from .models import cached_float_folder, load_config
    if source.gguf_file is not None:
        if cached_float_folder(source) is None:  # a cache was converted from this file after a whole read
            check_gguf(source.folder / source.gguf_file)
        return
    check_config(source.folder)
    files = check_weight_files(source.folder)
    config = load_config(source)
    check_tensors(config, files, source.folder)
    check_tokenizer(source.folder)

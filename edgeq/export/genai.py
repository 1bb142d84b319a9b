"""genai_config.json: what onnxruntime-genai (the runtime apps use on Android, iOS and Windows) needs to load an
edgeq decoder folder. Written by hand because genai's own writer lives inside its model builder, which
builds its own graph; the fields are the builder's (onnxruntime_genai/models/builders/base.py,
make_genai_config), with our graph's input and output names.

Buffer sharing (`past_present_share_buffer`) is on: genai then hands GroupQueryAttention past and present
KV tensors that are one max-length buffer, its fast path. Our graph takes each row's length from the
attention mask's sums and the total length from the mask's width, exactly as the builder's graph does, so
it runs unchanged there (tests/test_genai.py compares logits step by step with and without sharing)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgeqError
from ..runtime.session import GENAI_CONFIG, MODEL_FILE
from .decoder import Dims

GENAI_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "smollm3", "granite")  # genai's model types our graph implements


def first_id(value):
    return value[0] if isinstance(value, list) else value


def decoder_section(config, filename: str) -> dict:
    dims = Dims.of(config)
    return {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": filename,
        "head_size": dims.head_dim,
        "hidden_size": config.hidden_size,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
        "num_attention_heads": dims.heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": dims.kv_heads,
    }


def genai_config(config, tokenizer_eos: int | None = None, filename: str = MODEL_FILE,
                 share_buffer: bool = True) -> dict:
    """The genai_config.json of our decoder graph of this Hugging Face config: greedy search by default
    (what `edgeq generate` does), up to the model's context length. The end-of-sequence id is the config's,
    else the tokenizer's (as genai's builder resolves it)."""
    if config.model_type not in GENAI_TYPES:
        raise EdgeqError(f"onnxruntime-genai has no model type {config.model_type!r} (supported: {GENAI_TYPES})")
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer_eos
    if eos is None:
        raise EdgeqError("neither the model's config nor its tokenizer names an end-of-sequence token, "
                         "which onnxruntime-genai needs")
    context = int(config.max_position_embeddings)
    return {
        "model": {
            "bos_token_id": config.bos_token_id if config.bos_token_id is not None else first_id(eos),
            "context_length": context,
            "decoder": decoder_section(config, filename),
            "eos_token_id": eos,
            "pad_token_id": config.pad_token_id if config.pad_token_id is not None else first_id(eos),
            "type": config.model_type,
            "vocab_size": config.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": share_buffer, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def write_genai_config(config, tokenizer, folder: Path, filename: str = MODEL_FILE) -> Path:
    path = Path(folder) / GENAI_CONFIG
    config = genai_config(config, getattr(tokenizer, "eos_token_id", None), filename)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path

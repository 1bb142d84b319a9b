"""Models as the Hub stores them: bf16 safetensors in shards with an index. Streamed block by block, the
tables outside the blocks mapped from a float32 cache (never copied whole), and quantized to exactly the
checkpoint that the same weights stored as one float32 file give (bf16 -> fp32 is exact)."""
from __future__ import annotations

import json

import torch

from edgeq import api
from edgeq.io import models
from edgeq.io.safetensors_scan import _MAPPED
from tests.conftest import calibration_text, tiny_llama_config


def save_pair(root, tokenizer):
    """The same weights twice: bf16 in 2 MB shards with an index, and float32 in one file."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(len(tokenizer), tie_word_embeddings=False),
                                             dtype=torch.float32)
    model = model.to(torch.bfloat16)
    model.save_pretrained(root / "bf16", max_shard_size="2MB")
    model.float().save_pretrained(root / "fp32")
    for folder in ("bf16", "fp32"):
        tokenizer.save_pretrained(root / folder)
    return root / "bf16", root / "fp32"


def test_bf16_shards_stream_and_quantize_like_their_float32_copy(tmp_path, bundled_tokenizer, monkeypatch):
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path / "cache"))
    bf16, fp32 = save_pair(tmp_path, bundled_tokenizer)
    index = json.loads((bf16 / models.INDEX).read_text())["weight_map"]
    assert len(set(index.values())) > 2  # really sharded

    streamed, _ = models.load_model(models.resolve_source(str(bf16)), stream_blocks=True)
    embed = streamed.model.embed_tokens.weight
    assert embed.dtype == torch.float32
    assert any(begin <= embed.data_ptr() < end for begin, end in _MAPPED)  # mapped from the cache, not a copy
    assert len(list((tmp_path / "cache" / "float" / "tables").iterdir())) == 2  # embedding and untied head

    config = api.QuantConfig(bits=4, group_size=32, samples=4, seq_len=64)
    metas = [api.quantize(str(folder), tmp_path / f"q-{folder.name}", config, calib=str(calibration_text()),
                          progress=False) for folder in (bf16, fp32)]
    assert metas[0]["tensors_sha256"] and metas[0]["tensors_sha256"] == metas[1]["tensors_sha256"]

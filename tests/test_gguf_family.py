"""A GGUF of a family other than the bundled Llama: a tiny Phi-3 (fused qkv and gate/up, which GGUF stores
as attn_qkv and ffn_up) written with gguf-py's own tensor-name map (the one llama.cpp's converter uses) and
the bundled GGUF's tokenizer fields. edgeq's GGUF path (transformers' GGUF readers, one tensor at a time)
must give back the model's own logits, and quantize it."""
from __future__ import annotations

import torch

from edgeq import api
from edgeq.io import models


def write_gguf(model, path, tokenizer_gguf) -> None:
    """model's tensors as F32 under GGUF names, its config under the architecture's keys, and every
    tokenizer.* field copied from tokenizer_gguf."""
    from gguf import MODEL_ARCH, GGUFReader, GGUFWriter, get_tensor_name_map
    config = model.config
    arch = {"phi3": MODEL_ARCH.PHI3, "qwen2": MODEL_ARCH.QWEN2}[config.model_type]
    writer = GGUFWriter(str(path), config.model_type)
    prefix = config.model_type
    writer.add_uint32(f"{prefix}.context_length", config.max_position_embeddings)
    writer.add_uint32(f"{prefix}.embedding_length", config.hidden_size)
    writer.add_uint32(f"{prefix}.feed_forward_length", config.intermediate_size)
    writer.add_uint32(f"{prefix}.block_count", config.num_hidden_layers)
    writer.add_uint32(f"{prefix}.attention.head_count", config.num_attention_heads)
    writer.add_uint32(f"{prefix}.attention.head_count_kv", config.num_key_value_heads)
    writer.add_float32(f"{prefix}.attention.layer_norm_rms_epsilon", config.rms_norm_eps)
    writer.add_float32(f"{prefix}.rope.freq_base", config.rope_parameters["rope_theta"])
    writer.add_uint32(f"{prefix}.rope.dimension_count", config.hidden_size // config.num_attention_heads)
    reader = GGUFReader(str(tokenizer_gguf))
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), field.types[0], sub)
    names = get_tensor_name_map(arch, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        base, _, suffix = name.rpartition(".")
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_phi3_gguf_loads_as_the_model_it_holds_and_quantizes(tmp_path, bundled_tokenizer, monkeypatch):
    from tests.conftest import tiny_family_model
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path / "cache"))
    # GGUF keeps no partial rotary factor or longrope tables: the plain-rope Phi-3 (Phi-3-mini-4k's shape)
    model = tiny_family_model("phi3", vocab_size=len(bundled_tokenizer), partial_rotary_factor=1.0,
                              rope_scaling=None, original_max_position_embeddings=64)
    bundled = models.bundled_source()
    write_gguf(model, tmp_path / "phi3.gguf", bundled.folder / bundled.gguf_file)
    loaded, config = models.load_model(models.resolve_source(str(tmp_path / "phi3.gguf")))
    assert config.model_type == "phi3"
    ids = torch.randint(0, 3000, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    meta = api.quantize(str(tmp_path / "phi3.gguf"), tmp_path / "q", api.QuantConfig(method="rtn", group_size=32),
                        progress=False)
    assert "model.layers.1.self_attn.qkv_proj" in meta["layers"] and "model.layers.0.mlp.gate_up_proj" in meta["layers"]

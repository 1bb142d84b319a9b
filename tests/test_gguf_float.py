"""The GGUF float cache written one block at a time equals what transformers' whole-model GGUF loading
gives, tensor for tensor, and a de-quantization in slabs of rows equals one in a single piece."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from edgeq.io import models
from edgeq.errors import EdgeqError
from edgeq.io.gguf_float import _float_tensor, convert, shard_key
from edgeq.io.models import INDEX


def test_block_tensors_share_a_shard_and_tables_get_their_own():
    assert shard_key("blk.3.attn_q.weight") == shard_key("blk.3.ffn_down.weight") == "block0003"
    assert shard_key("blk.12.attn_q.weight") != shard_key("blk.1.attn_q.weight")
    assert shard_key("token_embd.weight") != shard_key("output.weight")


def test_streamed_conversion_equals_transformers_whole_model_load(tmp_path):
    from transformers import AutoModelForCausalLM
    source = models.bundled_source()
    convert(source.folder / source.gguf_file, tmp_path)
    files = models.weight_files(tmp_path)
    assert (tmp_path / INDEX).exists() and len(set(files.values())) > 30  # a shard a block, not one file
    whole = AutoModelForCausalLM.from_pretrained(source.folder, gguf_file=source.gguf_file,
                                                 dtype=torch.float32).state_dict()
    assert set(files) == set(whole) - {"lm_head.weight"}  # SmolLM2's head is the embedding, stored once
    for name, file in files.items():
        with safe_open(str(file), "pt") as f:
            assert torch.equal(f.get_tensor(name), whole[name]), name
    streamed, _ = models.load_model(models.ModelSource(tmp_path, None, "converted"), stream_blocks=True)
    assert streamed.config.tie_word_embeddings and models.head_is_tied(streamed)


def _q8_tensor(rows: int, cols: int, name: str = "blk.0.ffn_up.weight"):
    """A real Q8_0 tensor (gguf's own quantizer) as GGUFReader presents one: codes a row of bytes each."""
    from gguf import GGMLQuantizationType, quantize
    weights = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    return SimpleNamespace(name=name, tensor_type=GGMLQuantizationType.Q8_0,
                           data=quantize(weights, GGMLQuantizationType.Q8_0))


def test_slabs_of_rows_dequantize_exactly_as_one_piece():
    from gguf import dequantize
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor
    tensor = _q8_tensor(37, 64)
    whole = dequantize(tensor.data, tensor.tensor_type)
    slabs = _float_tensor(tensor, TensorProcessor(), chunk_rows=5)
    assert slabs.dtype == torch.float32 and slabs.shape == (37, 64)
    assert np.array_equal(slabs.numpy(), whole)


def test_a_non_finite_weight_is_refused_with_its_name():
    from gguf import GGMLQuantizationType
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor
    data = np.ones(8, dtype=np.float32)
    data[5] = np.nan
    tensor = SimpleNamespace(name="blk.2.attn_norm.weight", tensor_type=GGMLQuantizationType.F32, data=data)
    with pytest.raises(EdgeqError, match="blk.2.attn_norm.weight"):
        _float_tensor(tensor, TensorProcessor(), chunk_rows=3)


def test_a_gguf_with_its_float_cache_is_not_parsed_again(monkeypatch):
    """Validation and the config read the cache converted from this very file (path, size, mtime): parsing the
    bundled GGUF's header took ~8 s a time, twice, in every quantize's load phase."""
    import gguf

    from edgeq.io.validate import check_float_source
    source = models.bundled_source()
    models.float_folder(source)  # the cache exists (converted once, as every load does)
    assert models.cached_float_folder(source) is not None

    def parsed(*args, **kwargs):
        raise AssertionError("the GGUF was parsed")
    monkeypatch.setattr(gguf, "GGUFReader", parsed)
    check_float_source(source)
    config = models.load_config(source)
    assert config.model_type == "llama" and config.num_hidden_layers == 30


def test_a_gguf_without_a_cache_is_still_read_whole(tmp_path):
    source = models.bundled_source()
    copy = tmp_path / "copy.gguf"
    copy.write_bytes((source.folder / source.gguf_file).read_bytes()[:1_000_000])  # cut: another file, no cache
    cut = models.ModelSource(tmp_path, copy.name, str(copy))
    assert models.cached_float_folder(cut) is None
    from edgeq.io.validate import check_float_source
    with pytest.raises(EdgeqError, match="truncated"):
        check_float_source(cut)

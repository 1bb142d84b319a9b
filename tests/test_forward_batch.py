"""The layer methods' block calls take as many windows as config.FORWARD_CALL_BYTES allows (fewer, larger calls);
block training keeps --batch-size, its training batch. The result is the same calibration up to float order."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from edgeq.calib import data, pipeline
from edgeq.config import FORWARD_CALL_BYTES
from edgeq.evaluation import heldout
from edgeq.io import models
from edgeq.quant import grid

from conftest import calibration_text

SMOLLM2_SHAPE = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9)


def _recipe(method="gptq", **fields):
    return pipeline.Recipe.of(method, grid.QuantSpec(4, 128), {}, batch_size=2, **fields)


def test_layer_methods_fill_the_call_budget_and_block_training_keeps_its_batch():
    # SmolLM2's widest activation at 128 tokens is its 1536-wide MLP: 32 MiB / (4 B x 1536 x 128) = 42 windows
    assert _recipe().forward_batch(SMOLLM2_SHAPE, 128) == FORWARD_CALL_BYTES // (4 * 1536 * 128) == 42
    # at 512 tokens the attention scores (9 heads x 512) are wider: 3 windows
    assert _recipe().forward_batch(SMOLLM2_SHAPE, 512) == 3
    assert _recipe("signround").forward_batch(SMOLLM2_SHAPE, 128) == 2
    assert _recipe(block_epochs=1).forward_batch(SMOLLM2_SHAPE, 128) == 2
    assert pipeline.Recipe.of("gptq", grid.QuantSpec(4, 128), {}, batch_size=64).forward_batch(SMOLLM2_SHAPE, 128) == 64


def _block_calls_and_result(tiny_model_dir, tokenizer):
    text, _ = heldout.read_text(str(calibration_text()))
    windows = data.calibration_windows(data.tokenize(tokenizer, text[:100_000]), 6, 64)
    model, config = models.load_model(models.resolve_source(str(tiny_model_dir)))
    arch = models.arch_of(config)
    calls = []
    block = models.get_module(model, arch.blocks)[1]
    block.register_forward_pre_hook(lambda module, args: calls.append(1))
    recipe = _recipe(calib_dtype="float32")
    packed, timings = pipeline.quantize_model(model, arch, recipe, windows, progress=False)
    return len(calls), packed, timings.layer_errors


def test_one_call_per_pass_gives_the_calibration_of_many_small_calls(tiny_model_dir, bundled_tokenizer, monkeypatch):
    big_calls, big, big_errors = _block_calls_and_result(tiny_model_dir, bundled_tokenizer)
    monkeypatch.setattr(pipeline, "FORWARD_CALL_BYTES", 0)  # every call --batch-size (2) windows
    small_calls, small, small_errors = _block_calls_and_result(tiny_model_dir, bundled_tokenizer)
    assert (big_calls, small_calls) == (2, 6)  # the Hessian pass and the propagation, 6 windows each
    assert big_errors.keys() == small_errors.keys()
    for name, error in small_errors.items():
        assert big_errors[name] == pytest.approx(error, rel=1e-3)
    differing = sum(not torch.equal(t, big.tensors[n]) for n, t in small.tensors.items())
    assert differing <= len(small.tensors) // 4  # float order flips a rare rounding, no more

"""torch -> ONNX: the decoder with a flat KV cache interface (optimum's names), via torch.onnx.export.

Why this exporter: optimum-onnx 0.1 needs transformers < 4.58 and optimum ~= 2.1, which cannot install
beside the transformers 5 that loads our GGUF model; torch.onnx.export (TorchScript path) works with
torch 2.13 + transformers 5.23 once the DynamicCache is rebuilt from flat tensors inside a wrapper.
Inputs: input_ids, attention_mask, position_ids, past_key_values.{i}.key/value [B, kv_heads, P, head_dim];
outputs: logits, present.{i}.key/value.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

OPSET = 17


class DecoderWithFlatCache(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def kv_shape(config, batch: int, length: int) -> tuple[int, int, int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return batch, config.num_key_value_heads, length, head_dim


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_decoder(model, path: Path) -> None:
    """Write the fp32 decoder with KV cache to `path` (one .onnx file; weights inline under 2 GB)."""
    config = model.config
    n_layers = config.num_hidden_layers
    batch, new, past_len = 1, 3, 4
    dummy = (torch.ones(batch, new, dtype=torch.long),
             torch.ones(batch, past_len + new, dtype=torch.long),
             torch.arange(past_len, past_len + new).unsqueeze(0),
             *[torch.zeros(kv_shape(config, batch, past_len)) for _ in range(2 * n_layers)])
    inputs, outputs = io_names(n_layers)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    axes.update({name: {0: "batch", 2: "past_sequence"} for name in inputs[3:]})
    axes.update({name: {0: "batch", 2: "total_sequence"} for name in outputs[1:]})
    wrapper = DecoderWithFlatCache(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, dummy, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)

"""The output head as a quantized linear: its grid, and what becomes of a tied embedding.

Quantized at export (round to nearest, `edgeq export --lm-head`) or at quantize time by the method's solver
on the final norm's outputs (`edgeq quantize --lm-head`, calib/pipeline.py). Either way a tied table whose
codes the embedding lookup can read as they are (8 or 4 bits, no padded block) stays tied: the lookup
shares the head's codes (GatherBlockQuantized over MatMulNBits' B), stored once. Otherwise the head is
untied and the embedding stays float.
"""
from __future__ import annotations

import torch

from ..quant import grid
from ..quant.qweight import QuantizedWeight


def head_spec(k: int, bits: int) -> grid.QuantSpec:
    """The largest block up to 128 that divides K, so that a tied table's codes need no padding and the
    embedding lookup can share them (SmolLM2: K = 576 -> block 64)."""
    block = next((b for b in (128, 64, 32, 16) if k % b == 0), 128)
    return grid.QuantSpec(bits, block)


def attach_head(model, arch, qw: QuantizedWeight) -> None:
    """Put the dequantized head into the torch model: into the tied table when the lookup can share its
    codes (the embedding then reads the same values), else into an untied head of its own."""
    from ..quant.layout import node_layout, shares_codes_with_lookup
    from .models import get_module, head_is_tied
    head = get_module(model, arch.lm_head)
    if head_is_tied(model) and shares_codes_with_lookup(qw, node_layout(arch.lm_head, qw)):
        head.weight.data.copy_(qw.dequantize())  # the same tensor as the embedding
    else:
        head.weight = torch.nn.Parameter(qw.dequantize(), requires_grad=False)
        model.config.tie_word_embeddings = False

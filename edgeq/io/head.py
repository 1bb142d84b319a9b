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


# A rotated residual stream (transforms/rotate.py) with a tied head: the table is the rotated embedding, so the
# final norm's gain cannot be folded into a head of its own. It stays a d x d matrix after the norm
# (Q^T diag(gain) Q), stored as this buffer of the final norm and exported as one float MatMul.
FINAL_MIX = "rotation_mix"


def _mix_output(norm, inputs, output):
    return output @ getattr(norm, FINAL_MIX)


def attach_final_mix(model, arch, mix: torch.Tensor) -> None:
    """Make the final norm's output go through `mix` (its row vectors times the matrix)."""
    from .architectures import get_module
    norm = get_module(model, arch.final_norm)
    norm.register_buffer(FINAL_MIX, mix.to(torch.float32).contiguous())
    norm.edgeq_mix_hook = norm.register_forward_hook(_mix_output)


def detach_final_mix(model, arch) -> torch.Tensor:
    """Undo attach_final_mix: the final norm is a plain norm again; returns the matrix."""
    from .architectures import get_module
    norm = get_module(model, arch.final_norm)
    norm.edgeq_mix_hook.remove()
    del norm.edgeq_mix_hook
    return norm._buffers.pop(FINAL_MIX)


def final_mix(model, arch) -> torch.Tensor | None:
    from .architectures import get_module
    return getattr(get_module(model, arch.final_norm), FINAL_MIX, None)

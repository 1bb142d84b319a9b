"""`rotate`: an orthogonal rotation of the residual stream and of each attention head's values, folded into the
weights (QuaRot / SpinQuant's offline rotations, no online Hadamard): the graph is unchanged and the float
model computes the same logits, while every linear that reads the stream sees its weight's rows rotated, which
spreads outlier columns over the whole row before any grid is fitted.

With x' = x Q (Q orthogonal, d x d) carried between blocks instead of x:
- RMSNorm(x') = RMSNorm(x) Q without its gain (the rms of a row is unchanged), so each norm's gain g is folded
  into the linears that read it, and those are rotated on their input side: W' = W diag(g) Q;
- the linears that write the stream (attention out, MLP down) are rotated on their output side: W' = Q^T W,
  b' = b Q; the embedding's rows too: E' = E Q;
- an untied head reads the final norm: W' = W diag(g) Q. A tied head is the rotated embedding itself, so the
  final norm's gain stays as the matrix Q^T diag(g) Q after the norm (io/head.py's final mix, one d x d MatMul);
- within attention, each head's values are rotated by one head_dim x head_dim R (the rows of v_proj, R^T W_v,
  and the columns of o_proj per head, W_o R): attention mixes tokens, not channels, so R passes through it.
Gemma 3 is refused: its norms after the attention and the MLP act on the branch before it joins the stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..io.architectures import Arch, get_module, head_dim, head_is_tied
from ..io.head import attach_final_mix
from . import check_family
from .hadamard import random_rotation

READER_NORMS = ("input_layernorm", "post_attention_layernorm")  # read by the attention's and the MLP's inputs
SUPPORTED = ("granite", "llama", "mistral", "phi3", "qwen2", "qwen3", "smollm3")
REFUSED = {"gemma3_text": "Gemma 3's norms after the attention and the MLP sit on the branch, before it joins "
                          "the residual stream: a rotation of the stream does not pass through them"}


@dataclass(frozen=True)
class Rotation:
    residual: torch.Tensor  # d x d, float64
    values: torch.Tensor    # head_dim x head_dim, float64
    record: dict            # what quantization.json keeps

    @classmethod
    def for_config(cls, config, seed: int) -> "Rotation":
        check_supported(config)
        residual, residual_kind = random_rotation(config.hidden_size, seed)
        values, values_kind = random_rotation(head_dim(config), seed + 1)
        return cls(residual, values, {"name": "rotate", "seed": seed, "residual": residual_kind,
                                      "values": values_kind})


def check_supported(config) -> None:
    check_family("rotate", config, SUPPORTED, REFUSED)


def _set(linear_or_norm, name: str, value: torch.Tensor) -> None:
    getattr(linear_or_norm, name).data = value.to(torch.float32).contiguous()


def _fold_gain_into_readers(norm, readers: list, Q: torch.Tensor) -> None:
    gain = norm.weight.data.double()
    for linear in readers:
        _set(linear, "weight", (linear.weight.data.double() * gain[None, :]) @ Q)
    norm.weight.data.fill_(1.0)


def _rotate_writer(linear, Q: torch.Tensor) -> None:
    _set(linear, "weight", Q.T @ linear.weight.data.double())
    if linear.bias is not None:
        _set(linear, "bias", linear.bias.data.double() @ Q)


def _rotate_values(block, arch: Arch, config, R: torch.Tensor) -> None:
    """R^T on every kv head's rows of v (the last rows of a fused qkv), R on every head's columns of o."""
    hd, n_kv = head_dim(config), config.num_key_value_heads
    v = get_module(block, arch.qkv[-1])
    rows = slice(v.weight.shape[0] - n_kv * hd, v.weight.shape[0])  # v_proj: all; Phi-3's qkv_proj: the last
    W = v.weight.data.double()
    W[rows] = torch.einsum("ji,hjk->hik", R, W[rows].reshape(n_kv, hd, -1)).reshape(n_kv * hd, -1)
    _set(v, "weight", W)
    if v.bias is not None:
        b = v.bias.data.double()
        b[rows] = (b[rows].reshape(n_kv, hd) @ R).reshape(-1)
        _set(v, "bias", b)
    o = get_module(block, arch.attention_out)
    W_o = o.weight.data.double()
    _set(o, "weight", (W_o.reshape(W_o.shape[0], -1, hd) @ R).reshape(W_o.shape))


@torch.no_grad()
def rotate_block(block, arch: Arch, config, rotation: Rotation) -> None:
    Q = rotation.residual
    attention_norm, mlp_norm = (getattr(block, name) for name in READER_NORMS)
    _fold_gain_into_readers(attention_norm, [get_module(block, n) for n in arch.qkv], Q)
    _fold_gain_into_readers(mlp_norm, [get_module(block, n) for n in arch.gate_up], Q)
    _rotate_values(block, arch, config, rotation.values)
    _rotate_writer(get_module(block, arch.attention_out), Q)
    _rotate_writer(get_module(block, arch.down), Q)


@torch.no_grad()
def rotate_outside_blocks(model, arch: Arch, rotation: Rotation) -> None:
    """The embedding, the final norm and the head; a tied head keeps its table and gets the final mix."""
    Q = rotation.residual
    embed, norm, head = (get_module(model, name) for name in (arch.embed, arch.final_norm, arch.lm_head))
    tied = head_is_tied(model)
    gain = norm.weight.data.double().clone()
    # the Parameter's data replaced (a streamed model's table is mapped from its file): a tied head, the same
    # Parameter, reads the rotated table too
    embed.weight.data = (embed.weight.data.double() @ Q).float()
    if tied:
        attach_final_mix(model, arch, Q.T @ torch.diag(gain) @ Q)
    else:
        _set(head, "weight", (head.weight.data.double() * gain[None, :]) @ Q)
    norm.weight.data.fill_(1.0)


def apply(model, arch: Arch, seed: int = 0) -> dict:
    """Rotate a model in place: everything outside the blocks now, and each block now or, for a model whose
    blocks are streamed (models.load_block), as it is loaded. Returns the record for quantization.json."""
    from ..io.models import is_streamed
    rotation = Rotation.for_config(model.config, seed)
    rotate_outside_blocks(model, arch, rotation)
    if is_streamed(model):
        model.edgeq_block_transform = lambda block: rotate_block(block, arch, model.config, rotation)
    else:
        for block in get_module(model, arch.blocks):
            rotate_block(block, arch, model.config, rotation)
    return rotation.record

"""The decoder graph written node by node from the model's weights (the Llama family: llama, mistral,
qwen2, qwen3; and Gemma 3, see Style), in the fused form onnxruntime runs fastest: per block two RMS norms
(SkipSimplifiedLayerNormalization also adds the residual), one GroupQueryAttention with the rotary
embedding inside, and four linears, q/k/v and gate/up each concatenated into one node: MatMulNBits built
from our QuantizedWeight, or float MatMul.

Why not torch.onnx.export (what edgeq used first): its graph of SmolLM2 carries ~2,700 shape and glue
nodes (Unsqueeze, Gather, Concat, Reshape, Shape) that cost 13 of 21 ms per decoded token on 2 cores;
this one has 11 nodes per block. The interface is the one optimum uses: inputs input_ids, attention_mask,
position_ids, past_key_values.{i}.key/value [B, kv_heads, P, head_dim]; outputs logits,
present.{i}.key/value. Positions come from position_ids; the mask's row sums give GroupQueryAttention
each row's length, so batches may be right-padded.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import EdgeqError
from ..io.head import final_mix
from ..io.architectures import head_dim
from ..io.models import arch_of, get_module, head_is_tied, layer_kinds, logits_scale, rope_layers
from ..quant.qweight import QuantizedWeight
from ..quant.layout import MS_DOMAIN, NodeLayout, node_layout, node_tensors, shares_codes_with_lookup

OPSET = 23  # RMSNormalization (the first norm) is standard from 23; the others fuse the residual add


@dataclass
class Graph:
    """Nodes and initializers as they are added; names are unique by construction (prefix per module)."""
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        # np.require, not np.ascontiguousarray: that makes a 0-d array 1-d, and some inputs must be scalars (Range)
        self.initializers.append(numpy_helper.from_array(np.require(array, requirements="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | str, *, domain: str = "",
           name: str | None = None, **attrs) -> list[str]:
        from onnx import helper
        outputs = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name or outputs[0],
                                           domain=domain, **attrs))
        return outputs


def tensor(module_weight) -> np.ndarray:
    return module_weight.detach().float().numpy()


@dataclass(frozen=True)
class Dims:
    heads: int
    kv_heads: int
    head_dim: int
    eps: float

    @classmethod
    def of(cls, config) -> "Dims":
        return cls(config.num_attention_heads, config.num_key_value_heads, head_dim(config),
                   float(config.rms_norm_eps))


@dataclass(frozen=True)
class Style:
    """What a family changes in the block's graph. Gemma 3: RMS norms scale by (1 + w), four norms a block
    (the attention and MLP outputs are normed before the residual add), GeGLU (tanh GELU) instead of SwiGLU,
    the embedding multiplied by sqrt(hidden), its own query scale, and sliding and full layers each with
    their own rotary base (one cos/sin table per kind of layer). Granite: the embedding, each residual branch
    and the logits multiplied by constants, and its own query scale."""
    norm_offset: float = 0.0
    sandwich_norms: bool = False
    activation: str = "silu"
    embed_scale: float | None = None
    query_scale: float | None = None  # GroupQueryAttention's default is head_dim ** -0.5
    residual_scale: float | None = None  # each block's attention and MLP outputs, before the residual add
    logits_scale: float | None = None

    @classmethod
    def of(cls, model, arch) -> "Style":
        config, layer = model.config, get_module(model, arch.blocks)[0]
        activation = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
        if activation not in ACTIVATIONS:
            raise EdgeqError(f"cannot export the activation {activation!r} (supported: {', '.join(ACTIVATIONS)})")
        for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
            if getattr(config, cap, None) is not None:
                raise EdgeqError(f"cannot export a model with {cap} (Gemma 2's logit soft-capping)")
        scalar = getattr(config, "query_pre_attn_scalar", None)
        query_scale = float(scalar) ** -0.5 if scalar else getattr(config, "attention_multiplier", None)
        embed_scale = getattr(get_module(model, arch.embed), "scalar_embed_scale", None) or \
            getattr(config, "embedding_multiplier", None)
        return cls(norm_offset=1.0 if config.model_type in NORM_PLUS_ONE else 0.0,
                   sandwich_norms=hasattr(layer, "pre_feedforward_layernorm"), activation=ACTIVATIONS[activation],
                   embed_scale=_unless_one(embed_scale), query_scale=query_scale,
                   residual_scale=_unless_one(getattr(config, "residual_multiplier", None)),
                   logits_scale=logits_scale(config))

    def gamma(self, weight) -> np.ndarray:
        return tensor(weight) + np.float32(self.norm_offset)


def _unless_one(value) -> float | None:
    return None if value is None or float(value) == 1.0 else float(value)


NORM_PLUS_ONE = ("gemma3_text",)  # families whose RMS norm computes x_normed * (1 + w)
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


def node_prefix(names: list[str]) -> str:
    """The names of a node holding these linears: 'model_layers_0_self_attn_q_proj_k_proj_v_proj'."""
    if len(names) == 1:
        return names[0].replace(".", "_")
    return names[0].rsplit(".", 1)[0].replace(".", "_") + "_" + "_".join(n.rsplit(".", 1)[1] for n in names)


def matmulnbits_name(names: list[str]) -> str:
    return f"{node_prefix(names)}_MatMulNBits"


def linear(g: Graph, x: str, names: list[str], modules: list, qweights: dict[str, QuantizedWeight],
           accuracy_level: int, layouts: dict[str, NodeLayout]) -> str:
    """x @ [W_1; W_2; ...]^T (+ biases): linears that share their input, concatenated along N into one node
    (fewer, larger kernels: q/k/v and gate/up). MatMulNBits from our codes when every one is quantized with
    the same layout, float MatMul when none is (see `fusable`)."""
    prefix = node_prefix(names)
    out = f"{prefix}_out"
    quantized = [qweights.get(name) for name in names]
    if all(qw is None for qw in quantized):
        w_t = np.concatenate([tensor(m.weight).T for m in modules], axis=1)
        g.op("MatMul", [x, g.constant(f"{prefix}_weight_t", w_t)], out)
    else:
        node_layouts = {name: node_layout(name, qw) for name, qw in zip(names, quantized)}
        layout = node_layouts[names[0]]
        layouts.update(node_layouts)
        parts = [node_tensors(qw, layout) for qw in quantized]
        b, scales, zeros = (np.concatenate(arrays, axis=0) for arrays in zip(*parts))
        k = quantized[0].shape[1]
        n = sum(qw.shape[0] for qw in quantized)
        inputs = [gathered(g, x, prefix, quantized[0].input_order), g.constant(f"{prefix}_B", b),
                  g.constant(f"{prefix}_scales", scales), g.constant(f"{prefix}_zero_points", zeros)]
        g.op("MatMulNBits", inputs, out, domain=MS_DOMAIN, name=matmulnbits_name(names), K=k, N=n,
             bits=layout.bits, block_size=layout.block, accuracy_level=accuracy_level)
    biases = [getattr(m, "bias", None) for m in modules]
    if all(bias is None for bias in biases):
        return out
    bias = np.concatenate([tensor(b) if b is not None else np.zeros(m.weight.shape[0], np.float32)
                           for b, m in zip(biases, modules)])
    return g.op("Add", [out, g.constant(f"{prefix}_bias", bias)], f"{prefix}_biased")[0]


def gathered(g: Graph, x: str, prefix: str, order) -> str:
    """x, or x[..., order] for codes held in an act-order folder's group order (QuantizedWeight.input_order):
    one Gather on the activations, exact, where MatMulNBits' own g_idx input is 20-120x slower at decode."""
    if order is None:
        return x
    indices = g.constant(f"{prefix}_input_order", order.numpy().astype(np.int64))
    return g.op("Gather", [x, indices], f"{prefix}_gathered_input", axis=-1)[0]


def same_order(quantized: list[QuantizedWeight]) -> bool:
    orders = [qw.input_order for qw in quantized]
    if all(order is None for order in orders):
        return True
    return None not in orders and all(torch.equal(orders[0], order) for order in orders[1:])


def fusable(names: list[str], qweights: dict[str, QuantizedWeight]) -> bool:
    """One node can hold linears that are all float, or all quantized with one layout (bits and block) and one
    input order; mixed precision may give q, k and v different widths (an act-order import, different
    orders), and then each gets its own node."""
    quantized = [qweights.get(name) for name in names]
    if all(qw is None for qw in quantized):
        return True
    return None not in quantized and len({node_layout(n, qw) for n, qw in zip(names, quantized)}) == 1 \
        and same_order(quantized)


def linears(g: Graph, x: str, names: list[str], modules: list, qweights: dict[str, QuantizedWeight],
            accuracy_level: int, layouts: dict[str, NodeLayout]) -> list[str]:
    """Outputs of linears sharing input x: [one concatenated output] when fusable, else one per linear."""
    if fusable(names, qweights):
        return [linear(g, x, names, modules, qweights, accuracy_level, layouts)]
    return [linear(g, x, [n], [m], qweights, accuracy_level, layouts) for n, m in zip(names, modules)]


def rotary_caches(model, arch, dims: Dims, kind: str, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [length, rotary_dim / 2] (length: max_position_embeddings) from the model's own rotary module
    for one kind of layer, so every rope scaling transformers knows (linear, llama3, yarn's and longrope's
    attention factors, a partial rotary dimension) is baked in exactly."""
    positions = torch.arange(length or model.config.max_position_embeddings)[None]
    probe = torch.zeros(1, 1, dims.head_dim)
    rotary = get_module(model, arch.rotary)
    per_kind = "layer_type" in inspect.signature(rotary.forward).parameters  # Gemma 3: a base per kind
    with torch.no_grad():
        cos, sin = rotary(probe, positions, kind) if per_kind else rotary(probe, positions)
    half = cos.shape[-1] // 2
    if half % 8:
        raise EdgeqError(f"onnxruntime's GroupQueryAttention needs half the rotary dimension to be a multiple of 8; "
                         f"this model's is {half}")
    # transformers repeats the half-size table twice (rotate_half layout); GQA wants one half
    if not torch.equal(cos[..., :half], cos[..., half:]):
        raise EdgeqError("rotary table is not in the rotate-half layout GroupQueryAttention expects")
    return cos[0, :, :half].numpy().astype(np.float32), sin[0, :, :half].numpy().astype(np.float32)


def attention_inputs(g: Graph) -> tuple[str, str]:
    """seqlens_k (int32 [B]: index of the last valid token) and total_sequence_length (int32 scalar)."""
    one = g.constant("one_i64", np.array(1, dtype=np.int64))
    axis1 = g.constant("axis_1", np.array([1], dtype=np.int64))
    valid = g.op("ReduceSum", ["attention_mask", axis1], "mask_tokens", keepdims=0)[0]
    last = g.op("Sub", [valid, one], "mask_last_index")[0]
    seqlens = g.op("Cast", [last], "seqlens_k", to=6)[0]  # int32
    shape = g.op("Shape", ["attention_mask"], "mask_shape", start=1, end=2)[0]
    total_1d = g.op("Cast", [shape], "total_length_1d", to=6)[0]
    total = g.op("Squeeze", [total_1d], "total_sequence_length")[0]
    return seqlens, total


def sliding_window(config, kind: str) -> int | None:
    """The attention window of a layer of this kind: Gemma 3's sliding layers, or every layer of a model
    with one window for all (mistral; qwen2 only with use_sliding_window); None for full attention."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window) if kind != "full_attention" or getattr(config, "layer_types", None) is None else None


def block_linears(layer, prefix: str, names: tuple[str, ...]) -> tuple[list[str], list]:
    """(full names, modules) of a block's linears given by their names inside the block (models.Arch)."""
    return [f"{prefix}.{name}" for name in names], [get_module(layer, name) for name in names]


def attention(g: Graph, x: str, i: int, layer, prefix: str, dims: Dims, style: Style, kind: str, config,
              shared: dict, lin, arch) -> str:
    """GroupQueryAttention on q, k, v (three linears, or one fused qkv node whose output GQA splits itself),
    rotary inside it unless the layer has none (SmolLM3's NoPE layers), then the output projection."""
    attn = layer.self_attn
    qkv = lin(x, *block_linears(layer, prefix, arch.qkv))
    if getattr(attn, "q_norm", None) is not None:
        qkv = head_norms(g, split_qkv(g, qkv, i, dims), i, attn, dims, style)
    elif len(qkv) == 1:
        qkv += ["", ""]  # packed: GQA splits it itself
    rotates = rope_layers(config)[i]
    cos, sin = shared["rotary"][kind] if rotates else ("", "")
    inputs = [*qkv, f"past_key_values.{i}.key", f"past_key_values.{i}.value", shared["seqlens"],
              shared["total"], cos, sin, "position_ids"]
    attrs = dict(num_heads=dims.heads, kv_num_heads=dims.kv_heads, do_rotary=int(rotates), rotary_interleaved=0)
    if style.query_scale is not None:
        attrs["scale"] = style.query_scale
    window = sliding_window(config, kind)
    if window:
        attrs["local_window_size"] = window
    out = g.op("GroupQueryAttention", inputs, [f"layer{i}_attn", f"present.{i}.key", f"present.{i}.value"],
               domain=MS_DOMAIN, name=f"layer{i}_GroupQueryAttention", **attrs)[0]
    return lin(out, *block_linears(layer, prefix, (arch.attention_out,)))[0]


def split_qkv(g: Graph, qkv: list[str], i: int, dims: Dims) -> list[str]:
    if len(qkv) == 3:
        return qkv
    sizes = g.constant(f"layer{i}_qkv_sizes", np.array([dims.heads, dims.kv_heads, dims.kv_heads]) * dims.head_dim)
    return g.op("Split", [qkv[0], sizes], [f"layer{i}_q", f"layer{i}_k", f"layer{i}_v"], axis=-1)


def head_norms(g: Graph, qkv: list[str], i: int, attn, dims: Dims, style: Style) -> list[str]:
    """qwen3's per-head RMS norms of q and k (before rotary), as RMSNormalization over [B, S, heads, head_dim]
    views: GroupQueryAttention's own q/k norm inputs run on CUDA and WebGPU only (onnxruntime 1.32)."""
    q, k, v = qkv
    normed = []
    for name, x, module in (("q", q, attn.q_norm), ("k", k, attn.k_norm)):
        heads = g.constant(f"layer{i}_{name}_heads_shape", np.array([0, 0, -1, dims.head_dim], dtype=np.int64))
        flat = g.constant(f"layer{i}_{name}_flat_shape", np.array([0, 0, -1], dtype=np.int64))
        split = g.op("Reshape", [x, heads], f"layer{i}_{name}_heads")[0]
        y = g.op("RMSNormalization", [split, g.constant(f"layer{i}_{name}_norm", style.gamma(module.weight))],
                 f"layer{i}_{name}_normed", axis=-1, epsilon=dims.eps)[0]
        normed.append(g.op("Reshape", [y, flat], f"layer{i}_{name}_normed_flat")[0])
    return [*normed, v]


def mlp(g: Graph, x: str, i: int, layer, prefix: str, style: Style, lin, arch) -> str:
    gate_up = lin(x, *block_linears(layer, prefix, arch.gate_up))  # one output when fused (or fusable)
    gate, up = gate_up if len(gate_up) == 2 else \
        g.op("Split", gate_up, [f"layer{i}_gate", f"layer{i}_up"], axis=-1, num_outputs=2)
    if style.activation == "gelu_tanh":
        gated = g.op("Gelu", [gate], f"layer{i}_gate_gelu", approximate="tanh")[0]
    else:
        sig = g.op("Sigmoid", [gate], f"layer{i}_gate_sigmoid")[0]
        gated = g.op("Mul", [gate, sig], f"layer{i}_gate_silu")[0]
    act = g.op("Mul", [gated, up], f"layer{i}_mlp_act")[0]
    return lin(act, *block_linears(layer, prefix, (arch.down,)))[0]


def norm(g: Graph, name: str, weight, eps: float, x: str, skip: str | None, style: Style) -> tuple[str, str]:
    """(normalized, residual): RMSNorm of x, or of x + skip with the sum returned as the new residual."""
    gamma = g.constant(f"{name}_weight", style.gamma(weight))
    if skip is None:
        return g.op("RMSNormalization", [x, gamma], f"{name}_out", axis=-1, epsilon=eps)[0], x
    out, _, _, total = g.op("SkipSimplifiedLayerNormalization", [x, skip, gamma],
                            [f"{name}_out", "", "", f"{name}_residual"], domain=MS_DOMAIN, epsilon=eps)
    return out, total


def embedding(g: Graph, model, arch, head: QuantizedWeight | None, head_layout: NodeLayout | None,
              style: Style) -> tuple[str, str]:
    """(hidden states of input_ids, name of the float table or ""), times the family's embedding scale."""
    hidden, table = lookup(g, model, arch, head, head_layout)
    if style.embed_scale is None:
        return hidden, table
    scale = g.constant("embedding_scale", np.array(style.embed_scale, dtype=np.float32))
    return g.op("Mul", [hidden, scale], "embedding_scaled")[0], table


def lookup(g: Graph, model, arch, head: QuantizedWeight | None, head_layout: NodeLayout | None) -> tuple[str, str]:
    """(hidden states of input_ids, name of the float table or ""). A tied 8- or 4-bit head whose codes need
    no padding lends them to the lookup (GatherBlockQuantized reads MatMulNBits' B [V, K/block, block * bits
    / 8] as it is, two 4-bit codes a byte, low nibble first); otherwise the float table is gathered. Its
    scales too, and at 8 bits its zero points (one byte a block in both ops): a Reshape of the head's
    initializers to [V, blocks, 1], which onnxruntime folds once at load, instead of a second copy on disk
    (2.2 MB of SmolLM2's 91 MB W4 folder). MatMulNBits packs 4-bit zero points two a byte; the lookup keeps
    its own unpacked ones there."""
    if head is not None and head_is_tied(model) and shares_codes_with_lookup(head, head_layout):
        v, k = head.shape
        blocks = k // head_layout.block
        prefix = arch.lm_head.replace(".", "_")
        as_blocks = g.constant("embedding_block_shape", np.array([v, blocks, 1], dtype=np.int64))
        scales = g.op("Reshape", [f"{prefix}_scales", as_blocks], "embedding_scales")[0]
        if head_layout.bits == 8:
            zeros = g.op("Reshape", [f"{prefix}_zero_points", as_blocks], "embedding_zero_points")[0]
        else:
            zeros = g.constant("embedding_zero_points", head.zero.numpy().astype(np.uint8).reshape(v, blocks, 1))
        inputs = [f"{prefix}_B", "input_ids", scales, zeros]
        blocked = g.op("GatherBlockQuantized", inputs, "embedding_blocked", domain=MS_DOMAIN, gather_axis=0,
                       quantize_axis=2, block_size=head_layout.block, bits=head_layout.bits)[0]
        shape = g.constant("embedding_shape", np.array([0, 0, k], dtype=np.int64))
        return g.op("Reshape", [blocked, shape], "embedding")[0], ""
    name = g.constant("embedding_table", tensor(get_module(model, arch.embed).weight))
    return g.op("Gather", [name, "input_ids"], "embedding")[0], name


def lm_head(g: Graph, x: str, model, arch, table: str, lin) -> str:
    """Logits. A float head tied to the embedding reads the table itself (FusedMatMul, transB) instead of a
    second, transposed copy (113 MB on SmolLM2)."""
    head, scale = get_module(model, arch.lm_head), logits_scale(model.config)
    if table and head_is_tied(model):  # FusedMatMul's alpha scales for free
        return g.op("FusedMatMul", [x, table], "logits", domain=MS_DOMAIN, transA=0, transB=1,
                    alpha=1.0 if scale is None else scale)[0]
    out = lin(x, [arch.lm_head], [head])[0]
    if scale is not None:
        return g.op("Mul", [out, g.constant("logits_scale", np.array(scale, dtype=np.float32))], "logits")[0]
    return g.op("Identity", [out], "logits")[0]


def rotary_constants(g: Graph, model, arch, dims: Dims, kinds: list[str]) -> dict[str, tuple[str, str]]:
    """{layer kind: (cos, sin) tensor names}, one pair of tables per kind of layer (a longrope pair chosen
    per call, see longrope_switch)."""
    out = {}
    for kind in dict.fromkeys(kinds):
        suffix = "" if len(out) == 0 else f"_{kind}"
        switch = longrope_switch(model.config)
        cos, sin = rotary_caches(model, arch, dims, kind)
        if switch is None:
            out[kind] = rotary_tables(g, suffix, get_module(model, arch.rotary), kind, (cos, sin))
            continue
        short_cos, short_sin = rotary_caches(model, arch, dims, kind, length=switch)
        short_cos, short_sin = (np.concatenate([short, long[switch:]]) for short, long in
                                ((short_cos, cos), (short_sin, sin)))
        out[kind] = longrope_tables(g, suffix, switch, (short_cos, short_sin), (cos, sin))
    return out


def rotary_tables(g: Graph, suffix: str, rotary, kind: str, tables: tuple[np.ndarray, np.ndarray]) -> tuple[str, str]:
    """GroupQueryAttention's cos/sin caches as a few nodes over the rotary frequencies (Range x inv_freq, Cos,
    Sin, times the attention scaling) where they give the model's own tables, else the tables as stored.
    onnxruntime folds the nodes into the same constants when it loads the graph (the same memory at run
    time), but the folder ships 32 floats instead of 2 x positions x rotary_dim / 2: 2 MB for SmolLM2's 8,192
    positions, 16.8 MB for a 32,768-position Qwen2.5 (llama.cpp's files hold no table either)."""
    cos, sin = tables
    freqs = rotary_frequencies(rotary, kind, tables)
    if freqs is None:
        return g.constant(f"cos_cache{suffix}", cos), g.constant(f"sin_cache{suffix}", sin)
    inv_freq, scale = freqs

    def scalar(name: str, value: float) -> str:
        return g.constant(f"rotary_{name}{suffix}", np.array(value, dtype=np.float32))

    positions = g.op("Range", [scalar("start", 0.0), scalar("limit", float(len(cos))), scalar("delta", 1.0)],
                     f"rotary_positions{suffix}")[0]
    column = g.op("Unsqueeze", [positions, g.constant(f"rotary_axis{suffix}", np.array([1], dtype=np.int64))],
                  f"rotary_positions_column{suffix}")[0]
    angles = g.op("Mul", [column, g.constant(f"rotary_inv_freq{suffix}", inv_freq[None])], f"rotary_angles{suffix}")[0]
    scaling = scalar("scaling", scale) if scale != 1.0 else None  # yarn's and longrope's attention factor
    outputs = []
    for part in ("cos", "sin"):
        name = f"{part}_cache{suffix}"
        table = g.op(part.capitalize(), [angles], f"rotary_{part}_unscaled{suffix}" if scaling else name)[0]
        outputs.append(g.op("Mul", [table, scaling], name)[0] if scaling else table)
    return outputs[0], outputs[1]


def rotary_frequencies(rotary, kind: str, tables: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, float] | None:
    """(inv_freq [rotary_dim / 2], attention scaling) of a rotary module (Gemma 3: those of this kind of
    layer) that reproduce its tables in float32 as transformers computes them (cos(position x inv_freq) x
    scaling; 1e-6), else None: a rope whose tables come from elsewhere keeps them stored."""
    per_kind = hasattr(rotary, f"{kind}_inv_freq")
    inv_freq = getattr(rotary, f"{kind}_inv_freq" if per_kind else "inv_freq", None)
    if not isinstance(inv_freq, torch.Tensor) or inv_freq.shape != (tables[0].shape[1],):
        return None
    inv_freq = inv_freq.detach().float().numpy()
    scale = float(getattr(rotary, f"{kind}_attention_scaling" if per_kind else "attention_scaling", 1.0))
    angles = np.arange(len(tables[0]), dtype=np.float32)[:, None] * inv_freq[None]
    for table, fn in zip(tables, (np.cos, np.sin)):
        if not np.allclose(fn(angles) * np.float32(scale), table, rtol=0, atol=1e-6):
            return None
    return inv_freq, scale


def longrope_switch(config) -> int | None:
    """Phi-3's longrope: transformers rotates with the short factors while a call's sequence fits in
    original_max_position_embeddings and with the long ones past it; that length, or None for one table."""
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") != "longrope":
        return None
    original = int(rope.get("original_max_position_embeddings") or config.max_position_embeddings)
    return original if original < config.max_position_embeddings else None


def longrope_tables(g: Graph, suffix: str, switch: int, short: tuple, long: tuple) -> tuple[str, str]:
    """(cos, sin) of an If node on total_sequence_length > switch, as transformers chooses per call (and as
    onnxruntime-genai's builder writes it). Both tables have every row (GroupQueryAttention checks the cache
    against its buffer's length); the short one's rows from `switch` on are the long ones, which the short
    branch never reads."""
    from onnx import helper, numpy_helper

    def branch(name: str, tables: tuple) -> object:
        nodes = [helper.make_node("Constant", [], [f"{name}_{part}"], value=numpy_helper.from_array(table))
                 for part, table in zip(("cos", "sin"), tables)]
        outputs = [helper.make_tensor_value_info(f"{name}_{part}", 1, None) for part in ("cos", "sin")]
        return helper.make_graph(nodes, name, [], outputs)

    limit = g.constant(f"longrope_switch{suffix}", np.array(switch, dtype=np.int32))
    longer = g.op("Greater", ["total_sequence_length", limit], f"longrope_is_long{suffix}")[0]
    return tuple(g.op("If", [longer], [f"cos_cache{suffix}", f"sin_cache{suffix}"],
                      then_branch=branch(f"long_rope{suffix}", long), else_branch=branch(f"short_rope{suffix}", short)))


def mlp_input(g: Graph, i: int, layer, dims: Dims, style: Style, residual: str, attn_out: str):
    """(normed MLP input, residual) after the attention: the attention output added to the residual
    and normed (post_attention_layernorm), or, with sandwich norms, normed on its own first and the sum
    normed by pre_feedforward_layernorm."""
    if not style.sandwich_norms:
        x, residual = norm(g, f"layer{i}_post_attention_norm", layer.post_attention_layernorm.weight, dims.eps,
                           residual, attn_out, style)
        return x, residual
    attn_out = norm(g, f"layer{i}_post_attention_norm", layer.post_attention_layernorm.weight, dims.eps,
                    attn_out, None, style)[0]
    x, residual = norm(g, f"layer{i}_pre_feedforward_norm", layer.pre_feedforward_layernorm.weight, dims.eps,
                       residual, attn_out, style)
    return x, residual


def scaled_branch(g: Graph, out: str, style: Style) -> str:
    """A block's attention or MLP output as the residual add takes it: times Granite's residual_multiplier."""
    if style.residual_scale is None:
        return out
    scale = "residual_scale"
    if not any(init.name == scale for init in g.initializers):
        g.constant(scale, np.array(style.residual_scale, dtype=np.float32))
    return g.op("Mul", [out, scale], f"{out}_scaled")[0]


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def graph_io(config, dims: Dims):
    from onnx import TensorProto, helper
    inputs, outputs = io_names(config.num_hidden_layers)
    kv = lambda length: ["batch", dims.kv_heads, length, dims.head_dim]  # noqa: E731
    shapes = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "total_sequence"],
              "position_ids": ["batch", "sequence"], "logits": ["batch", "sequence", config.vocab_size]}
    types = {"input_ids": TensorProto.INT64, "attention_mask": TensorProto.INT64, "position_ids": TensorProto.INT64}
    info = lambda name, length: helper.make_tensor_value_info(  # noqa: E731
        name, types.get(name, TensorProto.FLOAT), shapes.get(name) or kv(length))
    return ([info(n, "past_sequence") for n in inputs], [info(n, "total_sequence") for n in outputs])


def build_decoder(model, qweights: dict[str, QuantizedWeight], accuracy_level: int, arch=None):
    """(ModelProto, {quantized linear: NodeLayout}) for a Llama-family model whose quantized linears (and
    optionally its head) are given as QuantizedWeight; everything else is taken from the torch model."""
    from onnx import helper
    config = model.config
    arch = arch or arch_of(config)  # the exporter passes the one it already has
    dims = Dims.of(config)
    g, layouts = Graph(), {}
    lin = lambda x, names, modules: linears(g, x, names, modules, qweights, accuracy_level, layouts)  # noqa: E731
    head = qweights.get(arch.lm_head)
    head_layout = node_layout(arch.lm_head, head) if head is not None else None
    style, kinds = Style.of(model, arch), layer_kinds(config)
    seqlens, total = attention_inputs(g)
    shared = {"seqlens": seqlens, "total": total, "rotary": rotary_constants(g, model, arch, dims, kinds)}
    hidden, table = embedding(g, model, arch, head, head_layout, style)
    residual, skip = hidden, None
    for i, layer in enumerate(get_module(model, arch.blocks)):
        prefix = f"{arch.blocks}.{i}"
        x, residual = norm(g, f"layer{i}_input_norm", layer.input_layernorm.weight, dims.eps, residual, skip, style)
        skip = attention(g, x, i, layer, prefix, dims, style, kinds[i], config, shared, lin, arch)
        x, residual = mlp_input(g, i, layer, dims, style, residual, scaled_branch(g, skip, style))
        skip = mlp(g, x, i, layer, prefix, style, lin, arch)
        if style.sandwich_norms:
            skip = norm(g, f"layer{i}_post_feedforward_norm", layer.post_feedforward_layernorm.weight, dims.eps,
                        skip, None, style)[0]
        skip = scaled_branch(g, skip, style)
    x, _ = norm(g, "final_norm", get_module(model, arch.final_norm).weight, dims.eps, residual, skip, style)
    mix = final_mix(model, arch)
    if mix is not None:  # a rotated model's tied head: the final norm's gain, rotated (io/head.py)
        x = g.op("MatMul", [x, g.constant("final_norm_mix", tensor(mix))], "final_norm_mixed")[0]
    lm_head(g, x, model, arch, table, lin)
    inputs, outputs = graph_io(config, dims)
    proto = helper.make_model(helper.make_graph(g.nodes, "edgeq_decoder", inputs, outputs, g.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="edgeq")
    proto.ir_version = 10
    return proto, layouts

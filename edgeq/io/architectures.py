"""The architectures edgeq knows, as data: where a family keeps its blocks, embedding, norms and head, and which
linears of a block share an input. Adding a family is an entry in ARCHS (and, where it differs, a line in
layer_kinds, rope_layers or logits_scale, and in the exporter's Style). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import EdgeqError


@dataclass(frozen=True)
class Arch:
    base: str                           # the decoder without its head: returns last_hidden_state
    rotary: str                         # rotary embedding module (rebuilt when the model is streamed)
    blocks: str                         # attribute path of the decoder blocks (a ModuleList)
    embed: str
    final_norm: str
    lm_head: str
    # linears of a block, grouped by the input they share, in the block's order: the attention's input
    # projections (q, k, v: three linears, or one fused qkv), its output, the MLP's input projections (gate,
    # up: two, or one fused gate_up, gate first) and its output
    input_groups: tuple[tuple[str, ...], ...]

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(name for group in self.input_groups for name in group)

    @property
    def qkv(self) -> tuple[str, ...]:
        return self.input_groups[0]

    @property
    def attention_out(self) -> str:
        return self.input_groups[1][0]

    @property
    def gate_up(self) -> tuple[str, ...]:
        return self.input_groups[2]

    @property
    def down(self) -> str:
        return self.input_groups[3][0]


_OUTSIDE_BLOCKS = dict(base="model", rotary="model.rotary_emb", blocks="model.layers", embed="model.embed_tokens",
                       final_norm="model.norm", lm_head="lm_head")
_LLAMA_LIKE = Arch(**_OUTSIDE_BLOCKS, input_groups=(
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)))
# Phi-3/3.5/4-mini store q/k/v and gate/up fused: each is quantized as the one linear it is (one Hessian, one
# MatMulNBits), and the graph splits its output
_FUSED = Arch(**_OUTSIDE_BLOCKS, input_groups=(("self_attn.qkv_proj",), ("self_attn.o_proj",),
                                               ("mlp.gate_up_proj",), ("mlp.down_proj",)))
# What else a family changes lives where it acts, written once: in the blocks transformers runs during
# calibration (Gemma 3's (1 + w) norms and GeGLU; SmolLM3's layers without rotary; Granite's multipliers),
# in layer_kinds, rope_layers and logits_scale below, and in the exporter's Style.
ARCHS = {"llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
         "gemma3_text": _LLAMA_LIKE, "smollm3": _LLAMA_LIKE, "granite": _LLAMA_LIKE, "phi3": _FUSED}
SINGLE_KIND = "full_attention"


def layer_kinds(config) -> list[str]:
    """Per block, the kind of attention that picks its mask and rotary table (transformers' layer_types:
    Gemma 3 alternates sliding and full layers); one kind for every block where the config names none."""
    kinds = getattr(config, "layer_types", None)
    return list(kinds) if kinds else [SINGLE_KIND] * config.num_hidden_layers


def rope_layers(config) -> list[bool]:
    """Per block, whether its attention rotates q and k: SmolLM3 leaves every fourth layer without
    (no_rope_layers[i] == 0: NoPE); every other family rotates in every layer."""
    flags = getattr(config, "no_rope_layers", None)
    return [bool(flag) for flag in flags] if flags else [True] * config.num_hidden_layers


def logits_scale(config) -> float | None:
    """The factor on the head's output: Granite divides its logits by logits_scaling; None for the rest."""
    scaling = getattr(config, "logits_scaling", None)
    return None if scaling in (None, 1, 1.0) else 1.0 / float(scaling)


def head_dim(config) -> int:
    """Each attention head's width: the config's head_dim where it sets one (Qwen3, Gemma 3), else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def arch_of(config) -> Arch:
    return arch_of_type(getattr(config, "model_type", None))


def arch_of_type(model_type) -> Arch:
    """The architecture of a model_type, or the one-line refusal naming the supported ones."""
    if model_type not in ARCHS:
        raise EdgeqError(f"unsupported architecture {model_type!r}; edgeq supports: {', '.join(sorted(ARCHS))}")
    return ARCHS[model_type]


def get_module(root, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def head_is_tied(model) -> bool:
    """Whether the output head and the embedding are one tensor (SmolLM2's are)."""
    arch = arch_of(model.config)
    return get_module(model, arch.lm_head).weight is get_module(model, arch.embed).weight

"""`awq`: activation-aware scaling (AWQ, Lin et al. 2024), searched per block on its calibration inputs and
folded into the weights, so the graph is unchanged and the float model computes the same logits.

For a linear group reading x, a per-input-channel s > 0 is moved out of x and into the weight: x W^T =
(x / s) (W diag(s))^T. The division lands on what produced x, exactly:
- q/k/v read the attention's norm, gate/up the MLP's norm: the norm's gain g becomes g / s;
- o reads the attention's values: v's rows (and bias) are divided by s, each kv head's once; under GQA every
  query head of a kv head shares that head's s, so the statistic is averaged over them first;
- down reads act(gate) * up: up's rows (and bias) are divided by s.
Scaling a column up by s shrinks its rounding error relative to the column by about s (the group's step is
set by the others), which is what salient channels (large mean |x|) want. s = m^alpha for the statistic m =
mean |x| per channel, normalised by sqrt(max s * min s); alpha is searched on a grid of AWQ's 20 points in
[0, 1). alpha = 0 is s = 1, no change, so the search never picks worse than no scaling.

The loss of a candidate is the group's output error under round-to-nearest on the layer's own grid, computed
from the block's input Hessian H = X^T X / n: sum over the group's linears of tr(dW H dW^T), dW = W - Q(W s) / s.
That is the mean squared output error of the group's linears on every calibration token (AutoAWQ runs the
module on a sample of tokens instead; the loss it sees through the softmax and the MLP is not modelled here).
A Hessian, not the tokens: the block's accumulators already hold it, so the search costs no forward pass, and
the solver that follows (GPTQ, ...) gets the scaled Hessian diag(1/s) H diag(1/s) for free.

Runs inside the block loop (calib/pipeline.py), after the model transforms (rotate) are applied.
"""
from __future__ import annotations

import torch

from ..io.architectures import Arch, get_module, head_dim
from ..quant import grid
from . import check_family

GRID = 20  # AWQ's: alpha in {0, 1/20, ..., 19/20}
NORMS = ("input_layernorm", "post_attention_layernorm")  # what q/k/v and gate/up read
SUPPORTED = ("granite", "llama", "mistral", "phi3", "qwen2", "qwen3", "smollm3")
REFUSED = {"gemma3_text": "Gemma 3's (1 + w) norms are not folded by edgeq's awq yet"}


def apply(model, arch: Arch, seed: int = 0) -> None:
    """Nothing to do on the whole model: the scales are searched block by block (scale_block)."""
    check_family("awq", model.config, SUPPORTED, REFUSED)


def fake_quantize(W: torch.Tensor, spec: grid.QuantSpec) -> torch.Tensor:
    """W rounded to nearest on its grid (min-max), de-quantized."""
    gs = spec.columns_per_group(W.shape[1])
    scale, zero = grid.fit_params(W, spec)
    return grid.dequantize(grid.quantize_groups(W, scale, zero, gs, spec.maxq), scale, zero, gs)


def output_error(weights: list[tuple[torch.Tensor, grid.QuantSpec]], H: torch.Tensor, s: torch.Tensor) -> float:
    """sum over the linears of tr(dW H dW^T), dW = W - Q(W diag(s)) diag(1/s)."""
    total = 0.0
    for W, spec in weights:
        dW = W - fake_quantize(W * s, spec) / s
        total += float(((dW @ H) * dW).sum())
    return total


def candidate_scale(statistic: torch.Tensor, alpha: float) -> torch.Tensor:
    s = statistic.clamp(min=1e-4).pow(alpha)
    return s / torch.sqrt(s.max() * s.min())


def search_scale(weights, H: torch.Tensor, statistic: torch.Tensor, expand=lambda s: s):
    """(best s over the statistic's channels, its alpha, the error at alpha = 0, the best error). `expand` maps
    s to the linears' input columns (v -> o under GQA: one s per kv channel serves its query heads)."""
    H = H.to(torch.float32)
    base = output_error(weights, H, torch.ones_like(expand(statistic)))
    best = (torch.ones_like(statistic), 0.0, base)
    for i in range(1, GRID):
        s = candidate_scale(statistic, i / GRID)
        err = output_error(weights, H, expand(s))
        if err < best[2]:
            best = (s, i / GRID, err)
    return best[0], best[1], base, best[2]


def _linears(block, names):
    return [get_module(block, name) for name in names]


def _divide_rows(linear, rows: slice, s: torch.Tensor) -> None:
    linear.weight.data[rows] /= s[:, None].to(linear.weight.dtype)
    if linear.bias is not None:
        linear.bias.data[rows] /= s.to(linear.bias.dtype)


def _multiply_columns(linears, s: torch.Tensor) -> None:
    for linear in linears:
        linear.weight.data *= s[None, :].to(linear.weight.dtype)


def _last_rows(linear, n: int) -> slice:
    """The last n output rows: v of a fused qkv, up of a fused gate_up (v_proj, up_proj: all their rows)."""
    return slice(linear.weight.shape[0] - n, linear.weight.shape[0])


@torch.no_grad()
def scale_block(block, arch: Arch, config, stats: dict, spec_of) -> tuple[dict, dict]:
    """Search and fold the four scalings of one block. stats: {first linear of an input group: (H, mean |x|)}
    as the block's accumulators hold them; spec_of(name, W): a linear's grid. Returns ({first linear of a
    group: s over that group's inputs}, so the caller rescales its Hessians, and the block's record)."""
    groups = arch.input_groups
    hd, n_kv, n_heads = head_dim(config), config.num_key_value_heads, config.num_attention_heads
    scales, record = {}, {}

    def search(group, statistic=None, expand=lambda s: s):
        H, mean_abs = stats[group[0]]
        weights = [(get_module(block, n).weight.data.float(), spec_of(n, get_module(block, n).weight))
                   for n in group]
        s, alpha, base, err = search_scale(weights, H, mean_abs if statistic is None else statistic, expand)
        record[group[0]] = {"alpha": alpha, "error_ratio": round(err / base, 4) if base > 0 else 1.0}
        scales[group[0]] = expand(s)
        return s

    for norm_name, group in zip(NORMS, (groups[0], groups[2])):  # q/k/v and gate/up, the norm before them
        s = search(group)
        getattr(block, norm_name).weight.data /= s.to(getattr(block, norm_name).weight.dtype)
        _multiply_columns(_linears(block, group), s)

    _, o_abs = stats[arch.attention_out]  # v -> o: one s per kv channel, shared by that kv head's query heads
    per_kv = o_abs.reshape(n_kv, n_heads // n_kv, hd).mean(1).reshape(-1)
    s = search(groups[1], per_kv, lambda s: s.reshape(n_kv, 1, hd).expand(n_kv, n_heads // n_kv, hd).reshape(-1))
    v = get_module(block, arch.qkv[-1])
    _divide_rows(v, _last_rows(v, n_kv * hd), s)
    _multiply_columns([get_module(block, arch.attention_out)], scales[arch.attention_out])

    s = search(groups[3])  # up -> down
    up = get_module(block, arch.gate_up[-1])
    _divide_rows(up, _last_rows(up, get_module(block, arch.down).in_features), s)
    _multiply_columns([get_module(block, arch.down)], s)
    return scales, record


def summary(block_records: dict) -> dict:
    """quantization.json's record: the grid and, per block, each group's alpha and error ratio."""
    return {"name": "awq", "grid": GRID, "statistic": "mean |x| per input channel",
            "loss": "H-weighted output error of round-to-nearest", "blocks": block_records}


"""What quantizing each linear at each candidate width would cost the model, by two estimators:

- hessian: the layer's own objective tr(dW H dW^T), the output error on the calibration inputs of the
  solver's result (what GPTQ minimises). Cheap, but in each layer's own output units: an error at q_proj
  and one at down_proj move the loss by different amounts.
- fisher: 1/2 sum(F * dW^2) with F the diagonal empirical Fisher of the weights (mean squared gradient of
  the next-token loss, one window at a time): the second-order change of the loss itself, comparable
  across layers. Needs one backward pass per calibration window through the whole model.

The walk goes block by block on float inputs (each layer judged alone, the others float) and never
changes the model's weights.
"""
from __future__ import annotations

import torch

from ..quant import grid
from ..io.models import Arch, get_module, is_streamed, layer_kinds, load_block, release_weights
from ..util.progress import progress_bar
from ..solvers import get_solver, weighted_error
from .capture import capture_block_inputs
from .batches import Batches
from .pipeline import Timings, collect_hessians

def fisher_diagonal(model, arch: Arch, windows: torch.Tensor, progress: bool = True) -> dict[str, torch.Tensor]:
    """{linear: mean over windows of (d loss / d W)^2} for every block linear of a fully loaded model.
    Each gradient is folded into its accumulator as soon as it is complete and then freed, so the extra
    memory is one float32 copy of the linears, not two."""
    blocks = get_module(model, arch.blocks)
    fisher, handles = {}, []
    for p in model.parameters():
        p.requires_grad_(False)
    for i in range(len(blocks)):
        for name in arch.linears:
            weight = get_module(blocks[i], name).weight
            acc = fisher[f"{arch.blocks}.{i}.{name}"] = torch.zeros_like(weight)
            weight.requires_grad_(True)
            handles.append(weight.register_post_accumulate_grad_hook(lambda p, acc=acc: _fold(p, acc)))
    try:
        for w in progress_bar(range(windows.shape[0]), desc="fisher", unit="window", enabled=progress):
            ids = windows[w:w + 1]
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(False)
    for acc in fisher.values():
        acc /= windows.shape[0]
    return fisher


def _fold(p: torch.Tensor, acc: torch.Tensor) -> None:
    acc.addcmul_(p.grad, p.grad)
    p.grad = None


@torch.no_grad()
def layer_estimates(model, arch: Arch, windows: torch.Tensor, candidates: list[grid.QuantSpec], method: str,
                    solver_opts: dict, batch_size: int = 2, fisher: dict | None = None,
                    progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """{estimator: {linear: [estimate per candidate]}}: 'hessian' always, 'fisher' when its diagonal is given.
    Each candidate is the solver's actual result for that grid on the layer's float calibration inputs."""
    solver = get_solver(method)
    blocks = get_module(model, arch.blocks)
    batches = Batches(*capture_block_inputs(model, arch, windows, batch_size), batch_size)
    kinds = layer_kinds(model.config)
    estimates = {"hessian": {}, **({"fisher": {}} if fisher is not None else {})}
    timings = Timings()
    for i in progress_bar(range(len(blocks)), desc="sensitivity", unit="block", enabled=progress):
        load_block(model, arch, i)
        block, prefix, block_batches = blocks[i], f"{arch.blocks}.{i}.", batches.for_kind(kinds[i])
        hessians = collect_hessians(block, arch, block_batches, timings)
        for group in arch.input_groups:
            H = hessians[group[0]].hessian()
            for name in group:
                W = get_module(block, name).weight.data
                for est in estimates.values():
                    est[prefix + name] = []
                for spec in candidates:
                    W_hat = solver(W, H, spec, **solver_opts).dequantize()
                    estimates["hessian"][prefix + name].append(weighted_error(W, W_hat, H))
                    dW = W - W_hat
                    if fisher is not None:
                        estimates["fisher"][prefix + name].append(0.5 * float((fisher[prefix + name] * dW * dW).sum()))
        if i < len(blocks) - 1:
            block_batches.run(block)
        if is_streamed(model):
            release_weights(model, [prefix + name for name in arch.linears])
    return estimates


@torch.no_grad()
def slice_estimates(model, fisher: dict[str, torch.Tensor], qweights: dict, widths) -> dict[str, list[float]]:
    """{linear: [1/2 sum(F * (W - W_r)^2) for each width r]}: what each slice of a nested checkpoint's codes
    costs the loss, comparable across layers (Mix'n'Match plans from these); W the float model's weight.
    Block linears only: a quantized head is not nested."""
    out = {}
    for name, qw in qweights.items():
        if name not in fisher:
            continue
        W, F = get_module(model, name).weight.data, fisher[name]
        out[name] = [0.5 * float((F * (W - qw.slice(b).dequantize()).square()).sum()) for b in widths]
    return out

"""Capturing what calibration needs: the inputs of block 0, and input Hessians of a block's linears."""
from __future__ import annotations

import time

import torch

from ..io.models import Arch, get_module, layer_kinds


class StopForward(Exception):
    """Raised by a hook to end a forward pass whose remaining work nobody reads."""


def stop_at(module) -> torch.utils.hooks.RemovableHandle:
    """End every forward pass as it reaches `module`, after the module's earlier pre-hooks (its Hessian's) ran."""
    def stop(module, args):
        raise StopForward
    return module.register_forward_pre_hook(stop)


def to_device(obj, device):
    """Move tensors inside nested tuples/lists/dicts to device; leave everything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def capture_block_inputs(model, arch: Arch, windows: torch.Tensor, batch_size: int):
    """Run the model up to block 0 on every batch of windows; return the hidden states [S, L, D] (CPU) and,
    per batch, {layer kind: the keyword arguments (mask, rotary embeddings) blocks of that kind receive},
    which they take unchanged (models.layer_kinds). A model with several kinds (Gemma 3's sliding and full
    layers) runs on, its blocks passed through untouched, to the first block of each kind."""
    kinds = layer_kinds(model.config)
    first_of = {kind: kinds.index(kind) for kind in dict.fromkeys(kinds)}
    last = max(first_of.values())
    blocks = get_module(model, arch.blocks)
    caught = {"kwargs": {}}

    def catch(index):
        def hook(module, args, kwargs):
            if index == 0:
                caught["hidden"] = args[0] if args else kwargs["hidden_states"]
            if index in first_of.values():
                caught["kwargs"][kinds[index]] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if index == last:
                raise StopForward
        return hook

    hidden, kwargs_per_batch = None, []
    handles = [blocks[i].register_forward_pre_hook(catch(i), with_kwargs=True) for i in range(last + 1)]
    for i in range(last):  # blocks before the last kind's first: their weights may not even be loaded
        blocks[i].forward = _pass_through
    try:
        with torch.no_grad():
            for start in range(0, windows.shape[0], batch_size):
                ids = windows[start:start + batch_size]
                try:
                    model(input_ids=ids, use_cache=False)
                except StopForward:
                    pass
                h = caught["hidden"]
                if hidden is None:
                    hidden = torch.empty(windows.shape[0], *h.shape[1:], dtype=h.dtype)
                hidden[start:start + ids.shape[0]] = h
                kwargs_per_batch.append(dict(caught["kwargs"]))
    finally:
        for handle in handles:
            handle.remove()
        for i in range(last):
            del blocks[i].forward
    return hidden, kwargs_per_batch


def _pass_through(hidden_states, *args, **kwargs):
    return hidden_states


class HessianAccumulator:
    """H = X^T X / n over every row of every batch, summed in place in float32 (addmm_: no temporary).
    A float64 sum measured 73 s of 307 s on SmolLM2 at 128 x 512 tokens, mostly converting K x K
    partial sums; float32 over 65k tokens keeps ~1e-6 relative accuracy, far below GPTQ's damping.
    With a bf16 product dtype each batch's X^T X is one bf16 GEMM (float32 accumulation inside, rounded to bf16
    once at its output) added into the float32 sum: a ~2^-9 relative rounding per batch that averages out over
    the batches, far below GPTQ's 1% damping."""

    def __init__(self, k: int, device, first_token_weight: float = 1.0, dtype: torch.dtype = torch.float32,
                 track_abs: bool = False):
        self.sum = torch.zeros(k, k, dtype=torch.float32, device=device)
        # mean |x| per channel, only for awq's search: an extra pass over every batch's activations otherwise
        self.abs_sum = torch.zeros(k, dtype=torch.float32, device=device) if track_abs else None
        self.count = 0
        self.seconds = 0.0
        self.first_token_weight = first_token_weight  # each window's first position counts this many times
        self.dtype = dtype  # the products' inputs

    def add(self, x: torch.Tensor) -> None:
        t = time.perf_counter()
        if self.first_token_weight != 1.0 and x.dim() == 3:
            self._add_product(x[:, 0], self.first_token_weight - 1.0)
        x = x.reshape(-1, x.shape[-1])
        self._add_product(x, 1.0)
        if self.abs_sum is not None:
            self.abs_sum += x.abs().sum(0, dtype=torch.float32)
        self.count += x.shape[0]
        self.seconds += time.perf_counter() - t

    def _add_product(self, x: torch.Tensor, alpha: float) -> None:
        x = x.to(self.dtype)
        if self.dtype == torch.float32:
            self.sum.addmm_(x.T, x, alpha=alpha)
        else:
            self.sum.add_(x.T @ x, alpha=alpha)

    def hessian(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    def mean_abs(self) -> torch.Tensor:
        if self.abs_sum is None:
            raise RuntimeError("mean |x| was not tracked: make the accumulator with track_abs=True")
        return self.abs_sum / max(self.count, 1)

    def rescale_inputs(self, s: torch.Tensor) -> None:
        """The statistics of x / s (awq moved s from the inputs into the weights): H -> diag(1/s) H diag(1/s)."""
        inv = (1.0 / s).to(self.sum)
        self.sum.mul_(inv[:, None]).mul_(inv[None, :])
        if self.abs_sum is not None:
            self.abs_sum.mul_(inv)

    def take_hessian(self) -> torch.Tensor:
        """hessian(), divided where the sum lies (no second K x K matrix); the accumulator is spent."""
        H, self.sum = self.sum.div_(max(self.count, 1)), None
        return H


def hessian_accumulators(block, arch: Arch, device, first_token_weight: float = 1.0,
                         dtype: torch.dtype = torch.float32, track_abs: bool = False, groups=None) -> dict:
    """One accumulator per input group (q/k/v share one, gate/up share one), keyed by its first linear; with
    track_abs each also sums |x| per channel (awq's statistic). groups: a subset of arch.input_groups (all)."""
    return {group[0]: HessianAccumulator(get_module(block, group[0]).in_features, device, first_token_weight, dtype,
                                         track_abs) for group in groups or arch.input_groups}


def on_group_inputs(block, arch: Arch, callback, groups=None):
    """callback(first linear's name, its input) each time a forward reaches an input group's first linear (of
    `groups`, all by default); returns a function removing the hooks."""
    handles = [get_module(block, group[0]).register_forward_pre_hook(
        lambda module, args, name=group[0]: callback(name, args[0])) for group in groups or arch.input_groups]

    def remove():
        for h in handles:
            h.remove()
    return remove


def hessian_hooks(block, arch: Arch, device, first_token_weight: float = 1.0, dtype: torch.dtype = torch.float32,
                  track_abs: bool = False, groups=None):
    """hessian_accumulators fed by a hook on each group's first linear. Returns ({first linear name:
    accumulator}, remove-hooks function)."""
    accumulators = hessian_accumulators(block, arch, device, first_token_weight, dtype, track_abs, groups)
    return accumulators, on_group_inputs(block, arch, lambda name, x: accumulators[name].add(x), groups)


def block_output(block, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out

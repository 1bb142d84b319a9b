"""Block-wise refinement (decoupleQ's stage 2): with every code of a block frozen, train the block's scales
so that its output matches the float block's output on the same (quantized-model) inputs.

Each scale is trained as s0 * exp(r), r starting at 0, so one learning rate suits layers whose scales
differ by orders of magnitude; zero points stay on their integer grid, untouched.
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from .. import grid
from ..qweight import QuantizedWeight
from .capture import to_device


def refine_scales(block, qweights: dict[str, QuantizedWeight], inputs: torch.Tensor, targets: torch.Tensor,
                  kwargs_per_batch: list, batch_size: int, epochs: int, lr: float, device) -> tuple[dict, list]:
    """Return ({local linear name: QuantizedWeight with trained scales}, [mean loss of each epoch])."""
    codes = {name: _centred_codes(qw).to(device) for name, qw in qweights.items()}
    base = {name: qw.scale.float().to(device) for name, qw in qweights.items()}
    log_ratio = {name: torch.zeros_like(s, requires_grad=True) for name, s in base.items()}
    optimizer = torch.optim.Adam(log_ratio.values(), lr=lr)
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    losses = []
    try:
        for _ in range(epochs):
            total = 0.0
            for b, start in enumerate(range(0, inputs.shape[0], batch_size)):
                rows = slice(start, start + batch_size)
                weights = {f"{name}.weight": _weight(codes[name], base[name] * log_ratio[name].exp(), qweights[name])
                           for name in qweights}
                out = functional_call(block, weights, (inputs[rows].to(device),),
                                      to_device(kwargs_per_batch[b], device))
                out = out[0] if isinstance(out, (tuple, list)) else out
                loss = torch.nn.functional.mse_loss(out, targets[rows].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * out.shape[0]
            losses.append(total / inputs.shape[0])
    finally:
        for p in frozen:
            p.requires_grad_(True)
    trained = {name: QuantizedWeight(qw.q, (base[name] * log_ratio[name].detach().exp()).cpu(), qw.zero, qw.bits,
                                     qw.group_size) for name, qw in qweights.items()}
    return trained, losses


def _centred_codes(qw: QuantizedWeight) -> torch.Tensor:
    """q - zero per column, float: the frozen integer part of w_hat = s (q - z)."""
    k = qw.shape[1]
    return qw.q.float() - grid.expand_groups(qw.zero.float(), qw.group_size, k)


def _weight(centred: torch.Tensor, scale: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    return grid.expand_groups(scale, qw.group_size, qw.shape[1]) * centred

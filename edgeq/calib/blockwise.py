"""Block-wise refinement (decoupleQ's stage 2): with every code of a block frozen, train the block's scales
so that its output matches the float block's output on the same (quantized-model) inputs.

Each scale is trained as s0 * exp(r), r starting at 0, so one learning rate suits layers whose scales
differ by orders of magnitude; zero points stay on their integer grid, untouched. For MatQuant the loss
is the weighted sum over the sliced widths (one forward per width, same scales: a slice's scale is the
master scale times 2^d).
"""
from __future__ import annotations

import torch

from ..quant import grid
from ..quant.qweight import QuantizedWeight
from .reconstruct import frozen, width_weighted_loss


def refine_scales(block, qweights: dict[str, QuantizedWeight], batches, targets: torch.Tensor, epochs: int,
                  lr: float, widths: list[tuple[int, float]] | None = None, loss: str = "mse") -> tuple[dict, list]:
    """Return ({local linear name: QuantizedWeight with trained scales}, [mean loss of each epoch]), trained on
    `batches` (calib.batches.Batches: the quantized model's states) against the same rows of `targets`.
    `widths` [(bits, weight)...]: train for the weighted loss of those slices (default: each linear's own
    stored width, which may differ between the linears of a mixed-precision block)."""
    widths = widths or [(None, 1.0)]
    device = batches.device
    codes = {(name, bits): centred_codes(qw, bits or qw.bits).to(device) for name, qw in qweights.items()
             for bits, _ in widths}
    base = {name: qw.scale.float().to(device) for name, qw in qweights.items()}
    log_ratio = {name: torch.zeros_like(s, requires_grad=True) for name, s in base.items()}
    optimizer = torch.optim.Adam(log_ratio.values(), lr=lr)

    def weights_of(bits):
        return {f"{name}.weight": scaled_weight(codes[name, bits], base[name] * log_ratio[name].exp(), qweights[name])
                for name in qweights}
    losses = []
    with frozen(block):
        for _ in range(epochs):
            total = 0.0
            for b, _ in batches:
                x, kwargs = batches.inputs(b)
                error = width_weighted_loss(block, weights_of, widths, x, batches.take(b, targets), kwargs, loss)
                optimizer.zero_grad(set_to_none=True)
                error.backward()
                optimizer.step()
                total += float(error.detach()) * x.shape[0]
            losses.append(total / batches.hidden.shape[0])
    trained = {name: QuantizedWeight(qw.q, (base[name] * log_ratio[name].detach().exp()).cpu(), qw.zero, qw.bits,
                                     qw.group_size) for name, qw in qweights.items()}
    return trained, losses


def centred_codes(qw: QuantizedWeight, bits: int) -> torch.Tensor:
    """2^d S(q) - zero per column (d = stored bits - bits), float: the frozen integer part of the
    `bits`-bit slice, w_hat = s (2^d S(q) - z) = s 2^d (S(q) - z / 2^d)."""
    k = qw.shape[1]
    drop = qw.bits - bits
    q = qw.slice(bits).q.float() * (1 << drop)
    return q - grid.expand_groups(qw.zero.float(), qw.group_size, k)


def scaled_weight(centred: torch.Tensor, scale: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    return grid.expand_groups(scale, qw.group_size, qw.shape[1]) * centred

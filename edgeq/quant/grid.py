"""The uniform quantization grid: `w_hat = scale * (q - zero)` with integer q and zero in [0, 2^bits - 1].

Groups run along K (input features). K need not divide by the group size: the last group of a row is
partial, exactly as MatMulNBits pads it. Everything here is torch, row-vectorised, loops only over groups.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import EdgeqError

PER_CHANNEL = -1
CLIP_METHODS = ("minmax", "mse")


@dataclass(frozen=True)
class QuantSpec:
    """What grid a layer is quantized to. group_size = PER_CHANNEL (-1) means one group per row."""

    bits: int = 4
    group_size: int = 128
    sym: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise EdgeqError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        gs = self.group_size
        if gs != PER_CHANNEL and (gs < 16 or gs & (gs - 1)):
            raise EdgeqError(
                f"group size must be a power of two >= 16 (or -1 / 'channel' for per-channel), got {gs}")

    @property
    def maxq(self) -> int:
        return 2 ** self.bits - 1

    def columns_per_group(self, k: int) -> int:
        return k if self.group_size == PER_CHANNEL else self.group_size


def fit_to_columns(spec: QuantSpec, k: int) -> QuantSpec:
    """A group at least as wide as the row is one group per row: per-channel, stored as such. Kept as asked,
    the group would be padded past K (a 1024 group on K = 576 stored 512 bytes of codes a row at 4 bits)."""
    if spec.group_size != PER_CHANNEL and spec.group_size >= k:
        return QuantSpec(spec.bits, PER_CHANNEL, spec.sym)
    return spec


def stored_group(group_size: int, k: int) -> int:
    """Another format's group size as a QuantizedWeight holds it: K for per-channel (-1 or 0 there, or a group
    at least K wide)."""
    return k if group_size in (-1, 0) or group_size >= k else group_size


def n_groups(k: int, group_size: int) -> int:
    return -(-k // group_size)


def group_of_column(k: int, group_size: int, device=None) -> torch.Tensor:
    return torch.arange(k, device=device) // group_size


def expand_groups(x: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """[N, G] per-group values -> [N, K] per-column values."""
    return x[:, group_of_column(k, group_size, x.device)]


def quantize_codes(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Codes for W given per-column (or broadcastable) scale and zero: clamp(round(W/s) + z)."""
    return torch.clamp(torch.round(W / scale) + zero, 0, maxq)


def quantize_groups(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                    maxq: int) -> torch.Tensor:
    """Codes [N, K] for W given per-group scale and zero [N, G]."""
    k = W.shape[1]
    return quantize_codes(W, expand_groups(scale, group_size, k), expand_groups(zero, group_size, k), maxq)


def minmax_params(Wg: torch.Tensor, bits: int, sym: bool, shrink: float | torch.Tensor = 1.0):
    """Scale and integer zero for each row of a group [N, c]; the range always contains 0 (GPTQ's rule)."""
    return range_params(Wg.amin(dim=1), Wg.amax(dim=1), bits, sym, shrink)


def group_ranges(W: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(row, group) min and max [N, G] of W [N, K], the last group possibly partial."""
    n, k = W.shape
    G = n_groups(k, group_size)
    pad = G * group_size - k
    lo = torch.nn.functional.pad(W, (0, pad), value=float("inf")).view(n, G, group_size).amin(dim=2)
    hi = torch.nn.functional.pad(W, (0, pad), value=float("-inf")).view(n, G, group_size).amax(dim=2)
    return lo, hi


def range_params(wmin: torch.Tensor, wmax: torch.Tensor, bits: int, sym: bool,
                 shrink: float | torch.Tensor = 1.0):
    """Scale and integer zero from the range [wmin, wmax] (any shape), widened to contain 0, then shrunk."""
    maxq = 2 ** bits - 1
    xmin = torch.clamp(wmin, max=0) * shrink
    xmax = torch.clamp(wmax, min=0) * shrink
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)  # an all-zero group: any scale reproduces it exactly
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.clamp(torch.round(-xmin / scale), 0, maxq)
    return scale, zero


def mse_params(Wg: torch.Tensor, bits: int, sym: bool, importance: torch.Tensor | None = None,
               grid: int = 100, max_shrink: float = 0.8, norm: float = 2.4):
    """Clipping search (GPTQ's reference rule): shrink the range by p = 1 - i/grid, keep the best per row.

    `importance` [c] weights each column's error, e.g. diag(H): without it, a group holding an input with
    100x the activation energy of its neighbours gets that column clipped, which costs more than the
    whole rest of the group gains (measured on SmolLM2's down_proj, where RTN-mse was 2.7x worse than
    min-max on the layer objective at 3 bits)."""
    maxq = 2 ** bits - 1
    weight = None if importance is None else importance.float()[None, :]

    def error(scale, zero):
        s, z = scale[:, None], zero[:, None]
        err = (s * (quantize_codes(Wg, s, z, maxq) - z) - Wg).abs_().pow_(norm)
        return (err if weight is None else err.mul_(weight)).sum(dim=1)
    shrinks = [1 - i / grid for i in range(int(max_shrink * grid))]
    lo, hi = Wg.amin(dim=1), Wg.amax(dim=1)  # once: only the shrink changes between candidates
    return best_shrink(shrinks, lambda p: range_params(lo, hi, bits, sym, shrink=p), error)


def best_shrink(shrinks, grid_at, error):
    """The one clipping search: per row, the grid of the shrink factor whose error is least. grid_at(p) ->
    (scale, zero), rows first; error(scale, zero) -> [N]. The first candidate wins ties and NaN never wins.
    RTN/GPTQ (mse_params: |w - w_hat|^2.4 weighted by diag H), decoupleQ (the row's layer objective) and
    MatQuant (the error summed over its widths) differ only in their candidates and their error."""
    best = None
    for p in shrinks:
        scale, zero = grid_at(p)
        err = error(scale, zero)
        if best is None:
            best = [torch.full_like(err, float("inf")), scale, zero]
        better = err < best[0]
        rows = better.view(-1, *([1] * (scale.dim() - 1)))
        best = [torch.where(better, err, best[0]), torch.where(rows, scale, best[1]), torch.where(rows, zero, best[2])]
    return best[1], best[2]


def fit_params(W: torch.Tensor, spec: QuantSpec, clip: str = "minmax",
               importance: torch.Tensor | None = None):
    """Per-(row, group) scale [N, G] float32 and zero [N, G] (float holding integers) for W [N, K].

    `importance` [K] (the Hessian's diagonal, when there is one) weights the MSE clipping search."""
    if clip not in CLIP_METHODS:
        raise EdgeqError(f"clip must be one of {CLIP_METHODS}, got {clip!r}")
    n, k = W.shape
    gs = spec.columns_per_group(k)
    scales, zeros = [], []
    for start in range(0, k, gs):
        Wg = W[:, start:start + gs].float()
        if clip == "minmax":
            s, z = minmax_params(Wg, spec.bits, spec.sym)
        else:
            imp = None if importance is None else importance[start:start + gs]
            s, z = mse_params(Wg, spec.bits, spec.sym, imp)
        scales.append(s)
        zeros.append(z)
    return torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """W_hat [N, K] float32 from codes [N, K] and per-group scale, zero [N, G]."""
    k = q.shape[1]
    s = expand_groups(scale.float(), group_size, k)
    z = expand_groups(zero.float(), group_size, k)
    return s * (q.float() - z)

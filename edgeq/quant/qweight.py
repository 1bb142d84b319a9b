"""QuantizedWeight: the decoupled weight every solver returns and everything downstream consumes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import grid, nesting
from ..errors import EdgeqError


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """W_hat[n, k] = scale[n, g] * (q[n, k] - zero[n, g]), g = k // group_size.

    q: uint8 [N, K] in [0, 2^bits - 1]; scale: float32 [N, G]; zero: uint8 [N, G] (integer zero points,
    required by onnxruntime's fast MatMulNBits path); group_size == K means per-channel.

    input_order: int64 [K] or None. None (every weight edgeq's solvers make) is the natural column order. An
    act-order folder of another tool (GPTQ desc_act, its g_idx) is held with its columns sorted by group, so
    that the groups are contiguous as above: stored column j is input input_order[j], and the product is
    x[..., input_order] @ W_stored^T (the ONNX export gathers x first: benchmarks/act_order.py measured that
    at 1.05-1.29x, where onnxruntime's own g_idx input ran 20-120x slower at a decode step).
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    input_order: torch.Tensor | None = None

    def __post_init__(self):
        if self.q.dtype != torch.uint8 or self.zero.dtype != torch.uint8:
            raise EdgeqError("QuantizedWeight codes and zero points must be uint8")
        if self.scale.dtype != torch.float32:
            raise EdgeqError("QuantizedWeight scales must be float32")
        if self.q.dim() != 2:
            raise EdgeqError(f"QuantizedWeight codes must be 2-D [N, K], got shape {tuple(self.q.shape)}")
        n, k = self.q.shape
        expected = (n, grid.n_groups(k, self.group_size))
        if tuple(self.scale.shape) != expected or tuple(self.zero.shape) != expected:
            raise EdgeqError(f"scale/zero must have shape {expected} for codes {tuple(self.q.shape)} "
                             f"and group size {self.group_size}")
        maxq = 2 ** self.bits - 1
        if int(self.q.max()) > maxq or int(self.zero.max()) > maxq:
            raise EdgeqError(f"codes or zero points exceed the {self.bits}-bit range")
        if self.input_order is not None:
            order = self.input_order
            if order.dtype != torch.int64 or tuple(order.shape) != (k,) or \
                    not torch.equal(torch.sort(order).values, torch.arange(k)):
                raise EdgeqError(f"input_order must be a permutation of the {k} input columns (int64 [K])")

    @classmethod
    def from_float_params(cls, q, scale, zero, bits: int, group_size: int) -> "QuantizedWeight":
        """Build from solver outputs held as float tensors that contain integers."""
        return cls(q=q.round().to(torch.uint8).cpu(), scale=scale.float().cpu().contiguous(),
                   zero=zero.round().to(torch.uint8).cpu(), bits=bits, group_size=group_size)

    @classmethod
    def from_input_columns(cls, codes: torch.Tensor, scale, zero, bits: int, group_size: int,
                           g_idx: torch.Tensor | None, name: str) -> "QuantizedWeight":
        """Codes [N, K] in input order with a format's g_idx (None: the natural groups), held sorted by group
        when the g_idx is an act-order one (group_order)."""
        order = None if g_idx is None else group_order(g_idx, codes.shape[1], group_size, name)
        held = codes if order is None else codes[:, order].contiguous()
        return cls(held, scale, zero, bits, group_size, order)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def n_groups(self) -> int:
        return self.scale.shape[1]

    def dequantize(self) -> torch.Tensor:
        """W_hat [N, K] in the natural column order, whatever order the codes are held in."""
        stored = grid.dequantize(self.q, self.scale, self.zero, self.group_size)
        return stored if self.input_order is None else stored[:, torch.argsort(self.input_order)]

    def codes_in_input_order(self) -> torch.Tensor:
        """q [N, K] with column k the code of input k (the layout of formats that carry a g_idx)."""
        return self.q if self.input_order is None else self.q[:, torch.argsort(self.input_order)]

    def slice(self, bits: int) -> "QuantizedWeight":
        """The `bits`-bit weight made of the most significant bits of these codes (MatQuant's nesting):
        scale x 2^d, zero / 2^d, so it stays on the integer-zero fast path. Refused when a zero point is
        not a multiple of 2^d."""
        nesting.check_widths(self.bits, bits)
        if bits == self.bits:
            return self
        q = nesting.slice_codes(self.q.to(torch.int16), self.bits, bits)
        zero = nesting.slice_zero(self.zero.to(torch.int16), self.bits, bits)
        return QuantizedWeight(q.to(torch.uint8), self.scale * float(1 << (self.bits - bits)),
                               zero.to(torch.uint8), bits, self.group_size, self.input_order)


def group_order(g_idx: torch.Tensor, k: int, group: int, name: str) -> torch.Tensor | None:
    """The input_order that makes an act-order g_idx's groups contiguous (None when g_idx is the natural
    order k // group). Each group must hold exactly `group` inputs, as GPTQ's act-order writes them (g_idx[i]
    is the rank of input i in the sweep, over the group size); any other assignment has no contiguous form."""
    g = g_idx.to(torch.int64).reshape(-1)
    natural = torch.arange(k) // group
    if g.shape != natural.shape:
        raise EdgeqError(f"{name}: g_idx holds {g.numel()} entries for {k} inputs")
    if torch.equal(g, natural):
        return None
    order = torch.argsort(g, stable=True)
    if not torch.equal(g[order], natural):
        raise EdgeqError(f"{name}: its g_idx puts other than {group} inputs in a group; only act-order's "
                         "equal groups are read")
    return order

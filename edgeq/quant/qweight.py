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
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int

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

    @classmethod
    def from_float_params(cls, q, scale, zero, bits: int, group_size: int) -> "QuantizedWeight":
        """Build from solver outputs held as float tensors that contain integers."""
        return cls(q=q.round().to(torch.uint8).cpu(), scale=scale.float().cpu().contiguous(),
                   zero=zero.round().to(torch.uint8).cpu(), bits=bits, group_size=group_size)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def n_groups(self) -> int:
        return self.scale.shape[1]

    def dequantize(self) -> torch.Tensor:
        return grid.dequantize(self.q, self.scale, self.zero, self.group_size)

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
                               zero.to(torch.uint8), bits, self.group_size)

"""LRQ (low-rank quantization, same authors as FlexRound): FlexRound with the per-weight scale S2 replaced by

    log(S2) = L @ U + r + c        L [N, rank] (zeros), U [rank, K] (Kaiming uniform), r [N, 1], c [1, K]

far fewer trained numbers than one per weight, which generalises better from a small calibration set.
The reference uses rank 1024 for 4096-wide Llama layers (a quarter of the width); `rank=None` takes a
quarter of the smaller dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch

from ..quant import grid
from .flexround import FlexRound
from ..util.argtypes import positive_int
from ..errors import EdgeqError
from .method import Method, Training, register
from .options import CLIP, CLIPS, LR, Flag, check_choice, option

RANK = Flag("--rank", "rank of the per-weight scales (unset: a quarter of the layer's smaller dimension)",
            type=positive_int)


@dataclass(frozen=True)
class LRQOptions(Training):
    lr: float | None = option(1e-2, LR)
    clip: str = option("mse", CLIP)
    rank: int | None = option(None, RANK)  # rank of the per-weight scales (None: a quarter of the smaller dimension)

    def __post_init__(self):
        super().__post_init__()
        check_choice("clip", self.clip, CLIPS)
        if self.rank is not None and self.rank < 1:
            raise EdgeqError(f"rank must be >= 1, got {self.rank}")


class LRQ(FlexRound):

    def __init__(self, W: torch.Tensor, spec: grid.QuantSpec, *, clip: str, rank: int | None, seed: int = 0):
        super().__init__(W, spec, clip=clip, rule="division")
        n, k = W.shape
        rank = max(1, min(n, k) // 4) if rank is None else min(rank, n, k)
        self.log_weights.requires_grad_(False)
        self.left = torch.zeros(n, rank, device=W.device, requires_grad=True)
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(k)  # kaiming_uniform_(a=sqrt(5)) on a [rank, K] matrix
        self.right = ((torch.rand(rank, k, generator=generator) * 2 - 1) * bound).to(W.device).requires_grad_()
        self.log_cols = torch.zeros(1, k, device=W.device, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.log_grid, self.left, self.right, self.log_rows, self.log_cols]

    def log_per_weight(self) -> torch.Tensor:
        return self.left @ self.right + self.log_rows + self.log_cols


register(Method("lrq", "learned", LRQOptions, LRQ, order=7, summary="flexround's per-weight scales in low rank"))

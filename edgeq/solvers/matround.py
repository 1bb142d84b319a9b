"""MatQuant's nested codes learned by block reconstruction (`--method matround`): SignRound's offset on the
master-width (int8) grid, trained on the block output error summed over the widths the codes serve
(MatQuant's loss sum_r lambda_r L_r, one forward per width), instead of GPTQ's column sweep.

    q = clamp(round(W / s + step * V) + z, 0, 2^bits - 1)     V in [-0.5, 0.5]
    w_r = s 2^d (S(q, r) - z / 2^d)                           S = nesting.slice_codes, d = bits - r

V is counted in steps of the narrowest slice (step = 2^(bits - narrowest), 64 int8 codes for int2): an
offset of half an int8 code, SignRound's box, could never move a 2-bit code. The slices round half up
like nesting.slice_codes, so the weight trained is bit for bit the slice the device cuts. The grid is
matquant's: symmetric or nested zero points, range shrunk for the least multi-width error of the
round-to-nearest codes (unweighted: no Hessian is collected for learned methods).

SmolLM2 block 3, g128, weights 4,4,1, 150 steps, block output MSE on 16 held-out windows (int8 / int4 /
int2): matquant (GPTQ sweep) 0.0077 / 0.0367 / 0.370; this 0.0158 / 0.0325 / 0.271; each width's own
GPTQ 0.0001 / 0.0244 / 0.235; naive slices of GPTQ int8 0.0002 / 0.0638 / 0.656.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import grid, nesting
from ..errors import EdgeqError
from ..quant.qweight import QuantizedWeight
from .matquant import fit_nested_params
from .method import Method, Training, register
from .options import CLIP, CLIPS, LR, WEIGHTS, WIDTHS, check_choice, check_nesting, option


@dataclass(frozen=True)
class MatRoundOptions(Training):
    # the offset counts 2-bit steps (64 int8 codes): a step of 1/steps would move every code by 64/steps, so
    # the rate stays at the 1/150 measured on SmolLM2 whatever the steps are
    lr: float | None = option(1 / 150, LR)
    widths: tuple = option(nesting.DEFAULT_WIDTHS, WIDTHS)
    weights: tuple | None = option(None, WEIGHTS)
    clip: str = option("mse", CLIP)

    def __post_init__(self):
        super().__post_init__()
        check_choice("clip", self.clip, CLIPS)
        check_nesting(self.widths, self.weights)


def round_half_up_ste(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 1/2) forward (nesting.slice_codes' rounding), identity backward."""
    return x + (torch.floor(x + 0.5) - x).detach()


class NestedRound:
    def __init__(self, W: torch.Tensor, spec: grid.QuantSpec, *, widths, weights, clip: str):
        loss = nesting.MultiWidthLoss.of(widths, weights)
        if spec.bits != loss.master_bits:
            raise EdgeqError(f"matround stores the widest width: bits must be {loss.master_bits}, got {spec.bits}")
        self.W, self.spec = W.float(), spec
        self.group_size = spec.columns_per_group(W.shape[1])
        self.widths = loss.weighted_widths  # [(bits, weight)]: the engine sums the block loss over them
        self.step = nesting.zero_step(spec.bits, min(widths))
        self.scale, self.zero = fit_nested_params(self.W, spec, loss, min(widths), clip)
        self.offset = torch.zeros_like(self.W, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.offset]

    def project(self) -> None:
        with torch.no_grad():
            self.offset.clamp_(-0.5, 0.5)

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        return grid.expand_groups(x, self.group_size, self.W.shape[1])

    def _codes(self) -> torch.Tensor:
        x = self.W / self._expand(self.scale) + self.step * self.offset
        return torch.clamp(round_half_up_ste(x) + self._expand(self.zero), 0, self.spec.maxq)

    def weight(self, bits: int | None = None) -> torch.Tensor:
        """The `bits`-bit slice's weight (default: the master width's)."""
        q = self._codes()
        drop = self.spec.bits - (bits or self.spec.bits)
        if drop:
            q = torch.clamp(round_half_up_ste(q / (1 << drop)), 0, (1 << (self.spec.bits - drop)) - 1) * (1 << drop)
        return self._expand(self.scale) * (q - self._expand(self.zero))

    @torch.no_grad()
    def result(self) -> QuantizedWeight:
        return QuantizedWeight.from_float_params(self._codes(), self.scale, self.zero, self.spec.bits,
                                                 self.group_size)


register(Method("matround", "learned", MatRoundOptions, NestedRound, nested=True, optimizer="sign", order=8,
                summary="matquant's int8 codes learned on the block error summed over the widths"))

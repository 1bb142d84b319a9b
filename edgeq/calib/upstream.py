"""Upstream correction: GPTAQ's asymmetric calibration (Li et al., 2025, arXiv 2504.02692), `--correct-upstream A`.

GPTQ fits each linear to its own float output on the quantized model's inputs X_q: min ||X_q (W - What)^T||^2.
The float model computed X_f W^T on its own inputs X_f, and the gap X_f - X_q is the error that every quantized
layer before this one left. Fitting the float model's output instead,

    ||X_f W^T - X_q What^T||^2 = ||X_q (W* - What)^T||^2 + const,    W* = W + W D H^-1,

where H = X_q^T X_q / n is the Hessian the solver already has and D = (X_f - X_q)^T X_q / n (W* is the
least-squares fit; the residual is orthogonal to X_q's columns). So the asymmetric objective is the solver's
own objective on a moved target, and every layer solver (gptq, cdquant, decoupleq, matquant) takes it
unchanged. A moves the target part of the way, W + A W D H^-1: W* is a least-squares fit on the calibration
text and the full step fits that text's noise too (GPTAQ's reference implementation scales its correction
term by 0.25). H is damped as GPTQ damps it.

Pairs need both streams through the same float block, token for token: each batch runs the block on the
quantized states and then on the float states, and the linears' inputs of the two passes are paired here
(forward hooks cannot tell the passes apart, so one catcher records each pass's inputs and the Hessians are
fed from it too). With --true-sequential the block's groups are quantized one pass at a time, so the float
pass runs on a float copy of the block and the float states move on only in the last pass.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from ..io.models import Arch
from ..solvers.gptq import unit_dead_diagonal
from .capture import block_output, on_group_inputs


class CrossAccumulator:
    """D = (X_f - X_q)^T X_q / n over every token, weighting each window's first position as the Hessians do."""

    def __init__(self, k: int, device, first_token_weight: float = 1.0):
        self.sum = torch.zeros(k, k, dtype=torch.float32, device=device)
        self.count = 0
        self.first_token_weight = first_token_weight
        self.seconds = 0.0

    def add(self, x_q: torch.Tensor, x_f: torch.Tensor) -> None:
        t = time.perf_counter()
        x_q, x_f = x_q.float(), x_f.float()
        if self.first_token_weight != 1.0 and x_q.dim() == 3:
            self.sum.addmm_((x_f[:, 0] - x_q[:, 0]).T, x_q[:, 0], alpha=self.first_token_weight - 1.0)
        x_q = x_q.reshape(-1, x_q.shape[-1])
        self.sum.addmm_((x_f.reshape(-1, x_f.shape[-1]) - x_q).T, x_q)
        self.count += x_q.shape[0]
        self.seconds += time.perf_counter() - t

    def rescale_inputs(self, s: torch.Tensor) -> None:
        """The statistics of x / s (awq moved s into the weights): D -> diag(1/s) D diag(1/s), as H."""
        inv = (1.0 / s).to(self.sum)
        self.sum.mul_(inv[:, None]).mul_(inv[None, :])

    def cross(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)


def input_catcher(block, arch: Arch):
    """{first linear of each input group: its input in the latest forward}, and a function removing the hooks."""
    seen = {}
    return seen, on_group_inputs(block, arch, seen.__setitem__)


@dataclass
class Upstream:
    """The float model's states at the block's input (advanced through the float block as the pairs are taken)
    and the D of each input group."""
    states: torch.Tensor            # [S, L, D], overwritten batch by batch with the float block's outputs
    strength: float                 # A
    damp: float                     # H's damping, a fraction of its mean diagonal
    first_token_weight: float = 1.0
    crosses: dict = field(default_factory=dict)
    # --true-sequential: a float copy of the block and its inputs' catcher, since the block itself gets its
    # quantized groups one pass at a time (None: the block is still float through every pair)
    float_block: torch.nn.Module | None = None
    float_seen: dict = field(default_factory=dict)

    def keep_float_block(self, block, arch: Arch) -> None:
        """Pair later passes on a copy of the block as it is now (float; awq's scales already folded in)."""
        self.float_block = copy.deepcopy(block)
        self.float_seen, _ = input_catcher(self.float_block, arch)  # the hooks go with the copy

    def begin(self, accumulators: dict) -> None:
        """A fresh D for each input group whose Hessian a pass collects."""
        for name, acc in accumulators.items():
            self.crosses[name] = CrossAccumulator(acc.sum.shape[0], acc.sum.device, self.first_token_weight)

    def pair(self, block, batches, b: int, seen: dict, accumulators: dict, advance: bool = True) -> None:
        """After batch b's quantized pass (its linears' inputs in `seen`): feed the Hessians, run the float block
        on the float states, feed the crosses and, with advance, move the float states on to its outputs."""
        x_q = dict(seen)
        for name, acc in accumulators.items():
            acc.add(x_q[name])
        float_block, float_seen = (block, seen) if self.float_block is None else (self.float_block, self.float_seen)
        out = block_output(float_block, *batches.with_states(self.states).inputs(b))
        for name in accumulators:
            self.crosses[name].add(x_q[name], float_seen[name])
        if advance:
            self.states[batches.rows(b)] = out.to(self.states.device)

    def rescale_inputs(self, name: str, s: torch.Tensor) -> None:
        self.crosses[name].rescale_inputs(s)

    def correction(self, name: str, H: torch.Tensor):
        """W -> W + A W D H^-1 for the linears that read input group `name` (H's damped factor made once)."""
        D = self.crosses.pop(name).cross().double()
        factor = damped_cholesky(H, self.damp)

        def corrected(W: torch.Tensor) -> torch.Tensor:
            step = torch.cholesky_solve((W.double() @ D).T, factor).T  # (W D) H^-1, H symmetric
            return (W.double() + self.strength * step).to(W.dtype)
        return corrected


def damped_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Lower Cholesky factor of H + damp * mean(diag H) * I in float64, a unit diagonal at dead inputs (GPTQ's)."""
    diag = unit_dead_diagonal(H)
    A = H.to(torch.float64, copy=True)  # H stays as the solver gets it
    A.diagonal().copy_(diag + damp * diag.mean())
    return torch.linalg.cholesky(A)

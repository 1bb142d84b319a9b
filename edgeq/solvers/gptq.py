"""GPTQ (Frantar et al., 2022): quantize columns in order, feeding each column's error forward through
the Cholesky factor of the damped inverse Hessian; lazy block updates keep the big work in GEMMs.

Act-order uses static groups (parameters fitted on the original W before the sweep), so codes stay in
natural column order and no g_idx is needed: onnxruntime's fast MatMulNBits path. Without act-order, a
group's parameters are fitted when the sweep reaches it, on the weights already updated by the errors
of all earlier columns (blocks are aligned to groups, so that is every earlier column).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import grid
from ..errors import EdgeqError
from ..kernels import BACKENDS, gptq_block
from ..quant.qweight import QuantizedWeight
from .method import Method, register
from .options import ACT_ORDER, CLIP, CLIPS, DAMP, check_choice, option


@dataclass(frozen=True)
class GPTQOptions:
    # Measured on SmolLM2-135M W4 g128 (32 x 512 calibration, 20 windows, fp 36.62): act-order + MSE 40.23,
    # act-order + min-max 41.02, natural order + MSE 44.14, + min-max 46.22.
    act_order: bool = option(True, ACT_ORDER)  # columns by descending Hessian diagonal, static groups (no g_idx)
    damp: float = option(0.01, DAMP)           # fraction of the mean Hessian diagonal added to it
    clip: str = option("mse", CLIP)
    block_size: int = 128     # columns per lazy update
    backend: str = "auto"     # the column sweep's kernel: numba on the CPU, torch on CUDA

    def __post_init__(self):
        check_choice("clip", self.clip, CLIPS)
        check_choice("backend", self.backend, BACKENDS)
        if not self.damp > 0:
            raise EdgeqError(f"damp must be > 0 (--damp), got {self.damp}")


STRIP = 256  # rows of H copied at a time into the factor's buffer: bounds the temporaries to 256 x K


def inverse_hessian_factor(H: torch.Tensor, damp: float, retries: int = 5, *,
                           perm: torch.Tensor | None = None) -> torch.Tensor:
    """Upper Cholesky factor U of (H' + damping * I)^-1 in float64: H' is H[perm][:, perm] with a unit
    diagonal at dead inputs (zero diagonal), damping = damp * mean(diag H'), raised x10 on failure.

    H (any float dtype) is left as it was, and one K x K float64 buffer is all this needs beside it
    (down_proj of a 1.5B model has K = 8960: 642 MB): the three LAPACK steps (Cholesky, inverse from the
    factor, Cholesky of the inverse) write over it in place, which torch does when `out` is the column-
    major view of the input. U is returned as that view (strides (1, K)); its numbers are those of
    torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H' + damping I)), upper=True)."""
    k = H.shape[0]
    perm = torch.arange(k, device=H.device) if perm is None else perm
    diag = unit_dead_diagonal(H)[perm]
    A = torch.empty(k, k, dtype=torch.float64, device=H.device)
    F = A.mT  # column-major: LAPACK's own layout, so torch factors it where it lies
    info = torch.empty((), dtype=torch.int32, device=H.device)
    for attempt in range(retries):
        damping = damp * 10 ** attempt * diag.mean()
        copy_permuted_(A, H, perm)
        A.diagonal().copy_(diag + damping)
        torch.linalg.cholesky_ex(F, out=(F, info))  # a failure leaves F half-written: rebuilt from H
        if info != 0:
            continue
        torch.cholesky_inverse(F, out=F)
        torch.linalg.cholesky_ex(F, upper=True, out=(F, info))
        if info == 0:
            return F
    raise EdgeqError(f"the Hessian is not positive definite even with damping {damp * 10 ** (retries - 1)}")


def unit_dead_diagonal(H: torch.Tensor) -> torch.Tensor:
    """diag(H) in float64 with 1 where an input never fired (0): Cholesky then works and the input's
    weights, zeroed by `zero_dead_columns`, cost nothing."""
    d = torch.diag(H).to(torch.float64, copy=True)
    d[d == 0] = 1
    return d


def copy_permuted_(out: torch.Tensor, H: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """out = H[perm][:, perm] in out's dtype, a strip of rows at a time (no K x K temporary)."""
    for i in range(0, H.shape[0], STRIP):
        out[i:i + STRIP] = H.index_select(0, perm[i:i + STRIP]).index_select(1, perm)
    return out


def solve(W: torch.Tensor, H: torch.Tensor, spec: grid.QuantSpec, *, act_order: bool, damp: float,
          block_size: int, clip: str, backend: str) -> QuantizedWeight:
    """Options and their defaults: GPTQOptions in solvers/__init__.py."""
    W, H = zero_dead_columns(W, H), H.to(W.device)  # no float64 copy of H: the factor reads it strip by strip
    n, k = W.shape
    gs = spec.columns_per_group(k)
    diag = unit_dead_diagonal(H)
    importance = diag.float()
    perm = torch.argsort(diag, descending=True) if act_order else torch.arange(k, device=W.device)
    factor = inverse_hessian_factor(H, damp, perm=perm)
    if act_order or gs == k:  # static groups
        scale, zero = grid.fit_params(W, spec, clip, importance)
        q = sweep(W, factor, scale, zero, gs, spec.maxq, perm, block_size=block_size, backend=backend)
        return QuantizedWeight.from_float_params(q, scale, zero, spec.bits, gs)

    scale = torch.empty(n, grid.n_groups(k, gs), device=W.device)
    zero = torch.empty_like(scale)

    def fit_group(W_group, g):  # on the weights already updated by every earlier column's error
        scale[:, g], zero[:, g] = (t[:, 0] for t in grid.fit_params(
            W_group, spec, clip, importance[g * gs:(g + 1) * gs]))

    q = sweep(W, factor, scale, zero, gs, spec.maxq, perm, block_size=min(block_size, gs), backend=backend,
              fit_group=fit_group)
    return QuantizedWeight.from_float_params(q, scale, zero, spec.bits, gs)


def zero_dead_columns(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """A float copy of W with 0 at inputs that never fire (zero diagonal in H): they cannot matter."""
    W = W.float().clone()
    W[:, torch.diag(H).to(W.device) == 0] = 0
    return W


def drop_dead_inputs(W: torch.Tensor, H: torch.Tensor):
    """`zero_dead_columns` and a float64 copy of H with a unit diagonal at those inputs (Cholesky works)."""
    H = H.to(W.device, torch.float64, copy=True)
    W = zero_dead_columns(W, H)
    H.diagonal().copy_(unit_dead_diagonal(H))
    return W, H


def sweep(W: torch.Tensor, Hinv: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, gs: int, maxq: int,
          perm: torch.Tensor, *, block_size: int = 128, backend: str = "auto", fit_group=None,
          kernel=None) -> torch.Tensor:
    """GPTQ's rounding: codes [N, K] (natural column order) for the grid (scale, zero) [N, G], columns
    taken in the order `perm`, each column's error fed forward through Hinv, the upper Cholesky factor
    of the permuted damped inverse Hessian (`inverse_hessian_factor(H, damp, perm=perm)`; float64 or
    float32, each strip is read in W's dtype). With `fit_group(W_group, g)` (natural
    order only) a group's parameters are fitted when the sweep reaches it; blocks must then divide gs.
    `kernel(W1, Hinv1, scale, zero)` replaces the round-to-nearest block sweep (MatQuant's)."""
    if kernel is None:
        kernel = lambda W1, Hinv1, s, z: gptq_block(W1, Hinv1, s, z, maxq, backend)  # noqa: E731
    k = W.shape[1]
    W = W[:, perm].contiguous()
    group = perm // gs  # the group of every (permuted) column
    Q = torch.empty_like(W)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        if fit_group is not None and i1 % gs == 0:
            fit_group(W[:, i1:i1 + gs], i1 // gs)
        W1 = W[:, i1:i2].clone()
        cols = group[i1:i2]
        Q1, Err1 = kernel(W1, _strip(Hinv[i1:i2, i1:i2], W), scale[:, cols].contiguous(), zero[:, cols].contiguous())
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ _strip(Hinv[i1:i2, i2:], W)
    q = torch.empty_like(Q)
    q[:, perm] = Q
    return q


def _strip(part: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A slice of the factor in W's dtype and row-major: the whole factor is never converted at once."""
    return part.to(like.dtype, memory_format=torch.contiguous_format)


register(Method("gptq", "layer", GPTQOptions, solve, order=1,
                summary="columns rounded in order, each error fed forward through the inverse Hessian"))

"""GPTQ (Frantar et al., 2022): quantize columns in order, feeding each column's error forward through
the Cholesky factor of the damped inverse Hessian; lazy block updates keep the big work in GEMMs.

Act-order uses static groups (parameters fitted on the original W before the sweep), so codes stay in
natural column order and no g_idx is needed: onnxruntime's fast MatMulNBits path. Without act-order, a
group's parameters are fitted when the sweep reaches it, on the weights already updated by the errors
of all earlier columns (blocks are aligned to groups, so that is every earlier column).
"""
from __future__ import annotations

import torch

from .. import grid
from ..errors import EdgeqError
from ..kernels import gptq_block
from ..qweight import QuantizedWeight


def inverse_hessian_factor(H: torch.Tensor, damp: float, retries: int = 5, *, consume: bool = False) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, in float64, damping x10 on failure.
    consume: H is a float64 copy its caller no longer needs; it is damped in place and its memory released
    once factored, so at most two K x K float64 matrices are alive (down_proj of a 1.5B model has
    K = 8960: 642 MB each). Otherwise H is left as it was, at the cost of one more."""
    A = H if consume and H.dtype == torch.float64 else H.to(torch.float64, copy=True)
    mean_diag = torch.diag(A).mean()
    added = 0.0
    for attempt in range(retries):
        damping = damp * 10 ** attempt * mean_diag
        A.diagonal().add_(damping - added)  # = H + damping * I: exactly so at the first attempt
        added = damping
        L, info = torch.linalg.cholesky_ex(A)
        if info != 0:
            continue
        A.set_()  # frees the matrix (the caller's H too, when consumed)
        Hinv = torch.cholesky_inverse(L)
        del L
        U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
        if info == 0:
            return U
        A = torch.linalg.inv(Hinv)  # rare: rebuild the damped H to damp it more
    raise EdgeqError(f"the Hessian is not positive definite even with damping {damp * 10 ** (retries - 1)}")


def solve(W: torch.Tensor, H: torch.Tensor, spec: grid.QuantSpec, *, act_order: bool, damp: float,
          block_size: int, clip: str, backend: str) -> QuantizedWeight:
    """Options and their defaults: GPTQOptions in solvers/__init__.py."""
    W, H = drop_dead_inputs(W, H)
    n, k = W.shape
    gs = spec.columns_per_group(k)
    importance = torch.diag(H).float()
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k, device=W.device)
    factor = permuted_factor(H, perm, damp, consume=True)  # H: this solver's own copy, released
    del H
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


def drop_dead_inputs(W: torch.Tensor, H: torch.Tensor):
    """Inputs that never fire cannot matter: their weights are quantized as 0 and H gets a unit diagonal
    there so that Cholesky works. Returns float copies."""
    W = W.float().clone()
    H = H.to(W.device, torch.float64, copy=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H


def permute_symmetric_(H: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """H[perm][:, perm] written over H: one K x K buffer beside it at a time, instead of two and a copy."""
    H.copy_(H.index_select(0, perm))
    H.copy_(H.index_select(1, perm))
    return H


def permuted_factor(H: torch.Tensor, perm: torch.Tensor, damp: float, *, consume: bool = False) -> torch.Tensor:
    """The float32 inverse factor of H permuted by perm; consume: H is a float64 copy the caller gives up
    (permuted and factored in place), otherwise it is left as it was."""
    return inverse_hessian_factor(permute_symmetric_(H if consume else H.clone(), perm), damp, consume=True).float()


def sweep(W: torch.Tensor, Hinv: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, gs: int, maxq: int,
          perm: torch.Tensor, *, block_size: int = 128, backend: str = "auto", fit_group=None,
          kernel=None) -> torch.Tensor:
    """GPTQ's rounding: codes [N, K] (natural column order) for the grid (scale, zero) [N, G], columns
    taken in the order `perm`, each column's error fed forward through Hinv, the upper Cholesky factor
    of the permuted damped inverse Hessian (`permuted_factor`). With `fit_group(W_group, g)` (natural
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
        Q1, Err1 = kernel(W1, Hinv[i1:i2, i1:i2], scale[:, cols].contiguous(), zero[:, cols].contiguous())
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    q = torch.empty_like(Q)
    q[:, perm] = Q
    return q

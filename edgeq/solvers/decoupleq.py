"""decoupleQ, stage 1 (Guo et al., 2024): the integer codes and the float grid of each row are two unknowns
of one problem, min (w - w_hat) H (w - w_hat)^T, solved by alternating:

- integer step: GPTQ's rounding sweep on the current grid (act-order, static groups);
- float step: for fixed codes, the grid that minimises the layer objective exactly, per row: the normal
  equations of a least squares in each group's (scale, offset), a 2G x 2G system per row.

Every step is kept per row only where it lowers that row's error, so the objective never rises (the
`trace` lists it after each outer iteration). Our constraint: the zero point must be an integer code in
[0, maxq] for MatMulNBits' fast path, so the float step rounds the solved offset to an integer zero and
re-solves the scales for that zero (a G x G system): decoupleQ's `zero_no_shift` form, w_hat = s(q - z).

The first iteration also searches the clipping of the grid against the full H (not its diagonal), as
the reference does. Start: the better, per row, of min-max RTN and our GPTQ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import grid
from ..quant.qweight import QuantizedWeight
from .gptq import drop_dead_inputs, inverse_hessian_factor, sweep
from ..util.argtypes import positive_int
from ..kernels import BACKENDS
from ..errors import EdgeqError
from .method import Method, register
from .options import DAMP, Flag, check_choice, option

ITERS = Flag("--iters", "outer iterations (1 = its GPTQ start only)", type=positive_int)


@dataclass(frozen=True)
class DecoupleQOptions:
    iters: int = option(4, ITERS)  # outer iterations (1 = its GPTQ start only)
    damp: float = option(0.01, DAMP)
    shrink_steps: int = 80    # candidate ranges of the start's clipping search
    backend: str = "auto"
    trace: list | None = None  # a list to append each iteration's objective to (tests, benchmarks)

    def __post_init__(self):
        check_choice("backend", self.backend, BACKENDS)
        if self.iters < 1 or not self.damp > 0:
            raise EdgeqError(f"iters must be >= 1 and damp > 0, got {self.iters} and {self.damp}")

ROW_CHUNK = 256  # rows per batched solve: bounds the [rows, G, K] intermediate (~40 MB at K=1536, G=24)


def solve(W: torch.Tensor, H: torch.Tensor, spec: grid.QuantSpec, *, iters: int, damp: float, shrink_steps: int,
          backend: str, trace: list | None) -> QuantizedWeight:
    W, H = drop_dead_inputs(W, H)
    n, k = W.shape
    gs = spec.columns_per_group(k)
    H = H + damp * torch.diag(H).mean() * torch.eye(k, dtype=H.dtype, device=H.device)
    Hf = H.float()
    perm = torch.argsort(torch.diag(H), descending=True)
    Hinv = inverse_hessian_factor(H, 1e-6, perm=perm)  # H is damped already; one factor serves every sweep

    def codes_for(scale, zero):
        return sweep(W, Hinv, scale, zero, gs, spec.maxq, perm, backend=backend)

    scale, zero = grid.fit_params(W, spec, "minmax")
    q = grid.quantize_groups(W, scale, zero, gs, spec.maxq)
    state = Candidate(q, scale, zero, row_errors(W, q, scale, zero, gs, Hf))
    s_mse, z_mse = grid.fit_params(W, spec, "mse", torch.diag(H).float())
    state = state.keep_better(Candidate.of(W, codes_for(s_mse, z_mse), s_mse, z_mse, gs, Hf))
    history = [state.total()]
    for it in range(iters - 1):
        s_try, z_try = (shrink_search(W, spec, gs, Hf, shrink_steps) if it == 0 else (state.scale, state.zero))
        state, rate_int = state.update(Candidate.of(W, codes_for(s_try, z_try), s_try, z_try, gs, Hf))
        s_fit, z_fit = float_step(W, state.q, Hf, gs, spec)
        state, rate_float = state.update(Candidate.of(W, state.q, s_fit, z_fit, gs, Hf))
        history.append(state.total())
        if rate_int < 1e-4 and rate_float < 1e-4:
            break
    if trace is not None:
        trace.extend(history)
    return QuantizedWeight.from_float_params(state.q, state.scale, state.zero, spec.bits, gs)


class Candidate:
    """Codes and grid of every row, with each row's objective value."""

    def __init__(self, q, scale, zero, err):
        self.q, self.scale, self.zero, self.err = q, scale, zero, err

    @classmethod
    def of(cls, W, q, scale, zero, gs, H):
        return cls(q, scale, zero, row_errors(W, q, scale, zero, gs, H))

    def keep_better(self, other: "Candidate") -> "Candidate":
        return self.update(other)[0]

    def update(self, other: "Candidate") -> tuple["Candidate", float]:
        """Per row, the better of the two; and the fraction of rows that improved."""
        better = other.err < self.err
        pick = lambda a, b: torch.where(better[:, None], b, a)  # noqa: E731
        merged = Candidate(pick(self.q, other.q), pick(self.scale, other.scale), pick(self.zero, other.zero),
                           torch.where(better, other.err, self.err))
        return merged, float(better.float().mean())

    def total(self) -> float:
        return float(self.err.sum())


def row_errors(W, q, scale, zero, gs, H) -> torch.Tensor:
    """(w - w_hat) H (w - w_hat)^T of every row, float64."""
    D = W - grid.dequantize(q, scale, zero, gs)
    return ((D @ H) * D).double().sum(dim=1)


def shrink_search(W, spec, gs, H, steps, max_shrink=0.8):
    """Per row, the min-max grid shrunk by the p = 1 - i/(steps/max_shrink) that minimises the layer
    objective with the full H (one p for all groups of a row, as in the reference)."""
    lo, hi = grid.group_ranges(W, gs)
    denominator = steps / max_shrink
    return grid.best_shrink([1 - i / denominator for i in range(steps)],
                            lambda p: grid.range_params(lo, hi, spec.bits, spec.sym, p),
                            lambda scale, zero: row_errors(W, grid.quantize_groups(W, scale, zero, gs, spec.maxq),
                                                           scale, zero, gs, H))


def float_step(W, q, H, gs, spec):
    """The grid that minimises the objective for fixed codes q, with integer zero points in [0, maxq].
    Rows whose solution is unusable (non-positive scale) get NaN and are rejected by the caller's
    comparison."""
    n, k = W.shape
    zero = torch.full((n, grid.n_groups(k, gs)), float(2 ** (spec.bits - 1)), device=W.device)
    if not spec.sym:
        s_free, t_free = solve_scale_and_offset(W, q, H, gs)
        zero = torch.clamp(torch.round(-t_free / s_free), 0, spec.maxq)
        zero = torch.where(s_free > 0, zero, torch.full_like(zero, float("nan")))
    scale = solve_scales(W, q - grid.expand_groups(torch.nan_to_num(zero), gs, k), H, gs)
    bad = ~(scale > 0).all(dim=1) | zero.isnan().any(dim=1)
    scale[bad] = float("nan")  # NaN errors never win a comparison
    return scale, torch.nan_to_num(zero)


def solve_scales(W, a, H, gs):
    """min over s of (w - sum_g s_g a^g) H (...)^T per row, with a^g = a on group g's columns: G x G."""
    M = group_gram(a, a, H, gs)
    rhs = group_sums(a * (W @ H), gs)
    return batched_solve(M, rhs)


def solve_scale_and_offset(W, q, H, gs):
    """w_hat = s_g q + t_g on group g: the 2G x 2G normal equations per row. Returns (s, t), [N, G] each."""
    ones = torch.ones_like(q)
    P11, P12, P22 = group_gram(q, q, H, gs), group_gram(q, ones, H, gs), group_gram(ones, ones, H, gs)
    P = torch.cat([torch.cat([P11, P12], dim=2), torch.cat([P12.transpose(1, 2), P22], dim=2)], dim=1)
    WH = W @ H
    rhs = torch.cat([group_sums(q * WH, gs), group_sums(WH, gs)], dim=1)
    x = batched_solve(P, rhs)
    G = P11.shape[1]
    return x[:, :G], x[:, G:]


def group_gram(A, B, H, gs):
    """[N, G, G] with entry (g, h) = sum over i in g, j in h of A_ri H_ij B_rj (float64)."""
    n, k = A.shape
    G = grid.n_groups(k, gs)
    pad = G * gs - k  # a partial last group: zero columns add nothing
    A, B = (torch.nn.functional.pad(t.float(), (0, pad)) for t in (A, B))
    Hp = torch.nn.functional.pad(H, (0, pad, 0, pad)).view(G * gs, G, gs)
    out = torch.empty(n, G, G, dtype=torch.float64, device=A.device)
    for r0 in range(0, n, ROW_CHUNK):
        a, b = A[r0:r0 + ROW_CHUNK].view(-1, G, gs), B[r0:r0 + ROW_CHUNK].view(-1, G, gs)
        Y = torch.einsum("ihj,rhj->rih", Hp, b)  # [rows, K, G]: H times b restricted to each group h
        out[r0:r0 + ROW_CHUNK] = torch.einsum("rgs,rgsh->rgh", a, Y.view(-1, G, gs, G)).double()
    return out


def group_sums(X, gs):
    n, k = X.shape
    G = grid.n_groups(k, gs)
    return torch.nn.functional.pad(X, (0, G * gs - k)).view(n, G, gs).sum(dim=2).double()


def batched_solve(M, rhs):
    """Solve M x = rhs per row in float64, with a small ridge (M is PSD and may be singular when a group's
    codes are all equal); float32 result."""
    diag = torch.diagonal(M, dim1=1, dim2=2)
    ridge = 1e-9 * diag.mean(dim=1).clamp(min=1e-30)
    M = M + torch.diag_embed(ridge[:, None].expand_as(diag))
    return torch.linalg.solve(M, rhs.unsqueeze(-1)).squeeze(-1).float()


register(Method("decoupleq", "layer", DecoupleQOptions, solve, order=2,
                summary="GPTQ rounding alternated with the exact least-squares grid per row; best at "
                        "2-3 bits, a few times slower"))

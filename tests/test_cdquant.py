"""CDQuant: the Numba kernel against a plain numpy reference (exactly), the torch twin, the objective never
above GPTQ's start, exact weights kept exact, and a coordinate-wise minimum checked by brute force."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import calibration_text
from edgeq import api
from edgeq.quant import grid
from edgeq.kernels.cd_numba import cd_rows_numba
from edgeq.kernels.cd_torch import cd_rows_torch
from edgeq.solvers import get_solver, weighted_error
from edgeq.solvers.cdquant import descend


def reference_descent(G, H, q, scale, maxq, steps):
    """Greedy coordinate descent written plainly: per row, per step, every coordinate's best move, the best
    of those taken (the first on a tie), the gradient updated."""
    moves = np.zeros(q.shape[0], dtype=np.int64)
    h = np.diag(H)
    for n in range(q.shape[0]):
        for _ in range(steps):
            c = np.clip(np.rint(q[n] - G[n] / (h * scale[n])), 0.0, maxq)
            d = scale[n] * (c - q[n])
            gain = np.where(c != q[n], 2.0 * d * G[n] + d * d * h, 0.0)
            j = int(np.argmin(gain))
            if not gain[j] < 0:
                break
            q[n, j] = c[j]
            G[n] += d[j] * H[:, j]
            moves[n] += 1
    return moves


def random_problem(n=6, k=40, bits=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3 * k, k)) * rng.uniform(0.2, 3.0, k)  # uneven input scales
    H = X.T @ X
    W = rng.standard_normal((n, k))
    scale = np.full((n, k), 0.7) * rng.uniform(0.5, 1.5, (n, 1))
    zero = np.full((n, k), float(2 ** (bits - 1)))
    q = np.clip(np.rint(W / scale + zero), 0, 2 ** bits - 1)
    G = (scale * (q - zero) - W) @ H
    return W, H, q, scale, zero, G


def objective(W, H, q, scale, zero):
    D = scale * (q - zero) - W
    return float(np.einsum("nk,kl,nl->", D, H, D))


@pytest.mark.parametrize("seed, steps", [(0, 1), (1, 7), (2, 200)])
def test_numba_kernel_equals_the_reference_exactly(seed, steps):
    W, H, q, scale, zero, G = random_problem(seed=seed)
    q_ref, G_ref = q.copy(), G.copy()
    moves_ref = reference_descent(G_ref, H, q_ref, scale, 7, steps)
    moves = cd_rows_numba(G, H, q, scale, 7, steps)
    assert np.array_equal(q, q_ref) and np.array_equal(G, G_ref) and np.array_equal(moves, moves_ref)
    assert moves.sum() > 0


def test_torch_twin_takes_the_same_moves():
    W, H, q, scale, zero, G = random_problem(seed=3)
    q_t, G_t = torch.from_numpy(q.copy()), torch.from_numpy(G.copy())
    moves_t = cd_rows_torch(G_t, torch.from_numpy(H), q_t, torch.from_numpy(scale), 7, 50)
    moves = cd_rows_numba(G, H, q, scale, 7, 50)
    assert np.array_equal(q_t.numpy(), q) and np.array_equal(moves_t.numpy(), moves)
    np.testing.assert_allclose(G_t.numpy(), G, rtol=1e-9, atol=1e-9)


def test_every_move_lowers_the_objective_and_the_end_is_a_coordinatewise_minimum():
    W, H, q, scale, zero, G = random_problem(n=3, k=12, seed=4)
    previous = objective(W, H, q, scale, zero)
    for _ in range(100):
        if cd_rows_numba(G, H, q, scale, 7, 1).sum() == 0:
            break
        now = objective(W, H, q, scale, zero)
        assert now < previous
        previous = now
    for n in range(3):  # brute force: no single code change lowers the objective
        for j in range(12):
            for code in range(8):
                trial = q.copy()
                trial[n, j] = code
                assert objective(W, H, trial, scale, zero) >= previous - 1e-9 * abs(previous)


@pytest.mark.parametrize("bits, group", [(4, 32), (3, 32), (2, 16), (3, -1)])
def test_cdquant_is_never_worse_than_its_gptq_start(bits, group):
    torch.manual_seed(bits)
    X = torch.randn(512, 64) * torch.rand(64) * 3
    H = (X.T @ X).double()
    W = torch.randn(24, 64)
    spec = grid.QuantSpec(bits, group)
    gptq = get_solver("gptq")(W, H, spec)
    cd = get_solver("cdquant")(W, H, spec)
    start, end = (weighted_error(W, qw.dequantize(), H) for qw in (gptq, cd))
    assert end <= start * (1 + 1e-9) and end < start  # random weights: some move always pays
    assert torch.equal(cd.scale, gptq.scale) and torch.equal(cd.zero, gptq.zero)
    refitted = get_solver("cdquant")(W, H, spec, refits=2)  # each refit and descent only lowers it further
    assert weighted_error(W, refitted.dequantize(), H) <= end * (1 + 1e-6)
    assert torch.equal(refitted.zero, gptq.zero) and (refitted.scale > 0).all()


def test_exactly_representable_weights_stay_exact():
    torch.manual_seed(0)
    spec = grid.QuantSpec(4, 32)
    exact = get_solver("rtn")(torch.randn(8, 64), None, spec)
    W = exact.dequantize()
    X = torch.randn(256, 64)
    H = (X.T @ X).double()
    result, moves = descend(W, H, exact, passes=2.0)
    assert int(moves.sum()) == 0 and torch.equal(result.q, exact.q)


def test_cdquant_through_the_pipeline_beats_gptq_on_the_first_block(tiny_model_dir, tmp_path):
    """Block 0's Hessians are the same in both runs (the float model's inputs), so its layer errors compare."""
    errors = {}
    for method in ("gptq", "cdquant"):
        config = api.QuantConfig(method=method, bits=3, group_size=32, samples=4, seq_len=64)
        api.quantize(str(tiny_model_dir), tmp_path / method, config, calib=str(calibration_text()), progress=False)
        meta = json.loads((tmp_path / method / "quantization.json").read_text())
        errors[method] = {k: v for k, v in meta["layer_errors"].items() if ".layers.0." in k}
    assert errors["gptq"] and errors["gptq"].keys() == errors["cdquant"].keys()
    for name, start in errors["gptq"].items():
        assert errors["cdquant"][name] <= start * (1 + 1e-6)
    assert sum(errors["cdquant"].values()) < sum(errors["gptq"].values())

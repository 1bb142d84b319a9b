"""The GPTQ column-sweep kernels (Numba and torch) against a plain numpy reference written from the paper."""
import numpy as np
import pytest
import torch

from edgeq.kernels import gptq_block
from edgeq.kernels.gptq_numba import gptq_block_numba


def naive_gptq_block(W1, Hinv1, scale, zero, maxq):
    """Column by column, row by row: quantize, scale the error by the pivot, push it right."""
    W1 = W1.astype(np.float32).copy()
    Q1 = np.zeros_like(W1)
    Err1 = np.zeros_like(W1)
    for i in range(W1.shape[1]):
        for n in range(W1.shape[0]):
            w, s, z = W1[n, i], scale[n, i], zero[n, i]
            q = np.float32(min(max(np.rint(w / s) + z, 0), maxq))
            err = np.float32((w - s * (q - z)) / Hinv1[i, i])
            Q1[n, i], Err1[n, i] = q, err
            W1[n, i + 1:] -= err * Hinv1[i, i + 1:]
    return Q1, Err1, W1


def random_block(n=37, b=32, bits=4, seed=0):
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((n, b)).astype(np.float32)
    A = rng.standard_normal((b, b)).astype(np.float32)
    Hinv1 = np.triu(A) + np.eye(b, dtype=np.float32) * (b ** 0.5)  # upper triangular, positive pivots
    scale = np.full((n, b), 0.3, dtype=np.float32) * rng.uniform(0.5, 2, (n, 1)).astype(np.float32)
    zero = np.full((n, b), 2 ** (bits - 1), dtype=np.float32)
    return W1, Hinv1.astype(np.float32), scale, zero, 2 ** bits - 1


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_kernel_matches_naive_reference(backend, bits):
    W1, Hinv1, scale, zero, maxq = random_block(bits=bits, seed=bits)
    Q_ref, Err_ref, W_ref = naive_gptq_block(W1, Hinv1, scale, zero, maxq)
    W_t = torch.from_numpy(W1.copy())
    Q, Err = gptq_block(W_t, torch.from_numpy(Hinv1), torch.from_numpy(scale), torch.from_numpy(zero),
                        maxq, backend=backend)
    np.testing.assert_array_equal(Q.numpy(), Q_ref)
    np.testing.assert_allclose(Err.numpy(), Err_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(W_t.numpy(), W_ref, rtol=1e-5, atol=1e-5)  # updated in place


def test_numba_wrapper_validates_before_calling_the_kernel():
    W1, Hinv1, scale, zero, maxq = random_block()
    with pytest.raises(ValueError):
        gptq_block_numba(W1.astype(np.float64), Hinv1, scale, zero, maxq)
    with pytest.raises(ValueError):
        gptq_block_numba(np.asfortranarray(W1), Hinv1, scale, zero, maxq)
    with pytest.raises(ValueError):
        gptq_block_numba(W1, Hinv1[:-1], scale, zero, maxq)


def test_unknown_backend_is_refused():
    W1, Hinv1, scale, zero, maxq = (torch.from_numpy(a) if isinstance(a, np.ndarray) else a
                                    for a in random_block())
    with pytest.raises(ValueError):
        gptq_block(W1, Hinv1, scale, zero, maxq, backend="fortran")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_kernel_matches_cpu():
    W1, Hinv1, scale, zero, maxq = random_block(n=256, b=128)
    Q_cpu, Err_cpu = gptq_block(torch.from_numpy(W1.copy()), *map(torch.from_numpy, (Hinv1, scale, zero)), maxq)
    Q_gpu, Err_gpu = gptq_block(torch.from_numpy(W1.copy()).cuda(),
                                *(torch.from_numpy(a).cuda() for a in (Hinv1, scale, zero)), maxq)
    assert (Q_gpu.cpu() != Q_cpu).float().mean() < 1e-3
    torch.testing.assert_close(Err_gpu.cpu(), Err_cpu, rtol=1e-3, atol=1e-3)

"""Orthogonal matrices for the rotations: a randomized Hadamard matrix where one of the order is known here,
a random orthogonal one otherwise.

Hadamard matrices are built as a Kronecker product of a Paley matrix and a Sylvester power of two, which covers
the widths of the families edgeq reads (SmolLM2's 576 = 36 x 16, 1536 = 12 x 128, Qwen2.5's 8960 = 140 x 64).
Why a Hadamard and not any orthogonal matrix: every entry has the same magnitude, so a rotated row spreads each
outlier evenly over the whole row (QuaRot found it quantizes better than random orthogonal matrices). The
rotations are folded into the weights offline, so no fast transform is needed at run time and any order works.
"""
from __future__ import annotations

import numpy as np
import torch


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = the Legendre symbol of (j - i) mod q: 0 on the diagonal, +1 for quadratic residues, else -1."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if a in residues else -1 for a in range(1, q)])
    index = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[index]


def _paley(order: int) -> np.ndarray | None:
    """A Hadamard matrix of this order from Paley's constructions (I: q = order - 1 prime, q = 3 mod 4;
    II: q = order / 2 - 1 prime, q = 1 mod 4), or None."""
    q = order - 1
    if _is_prime(q) and q % 4 == 3:
        core = np.zeros((order, order), dtype=np.int64)
        core[0, 1:], core[1:, 0], core[1:, 1:] = 1, -1, _jacobsthal(q)
        return np.eye(order, dtype=np.int64) + core
    q = order // 2 - 1
    if order % 2 == 0 and _is_prime(q) and q % 4 == 1:
        conference = np.zeros((q + 1, q + 1), dtype=np.int64)
        conference[0, 1:], conference[1:, 0], conference[1:, 1:] = 1, 1, _jacobsthal(q)
        return (np.kron(conference, np.array([[1, -1], [-1, -1]]))
                + np.kron(np.eye(q + 1, dtype=np.int64), np.array([[1, 1], [1, -1]])))
    return None


def _sylvester(order: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.int64)
    while h.shape[0] < order:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard(n: int) -> tuple[np.ndarray, str] | None:
    """(a +-1 matrix H with H H^T = n I, how it was built), or None where no construction here reaches n."""
    power = 1
    while n % (power * 2) == 0:
        power *= 2
    while power >= 1:
        m = n // power
        base = np.ones((1, 1), dtype=np.int64) if m == 1 else _paley(m)
        if base is not None:
            return np.kron(base, _sylvester(power)), f"hadamard {m}x{power}" if m > 1 else f"hadamard {power}"
        power //= 2
    return None


def random_rotation(n: int, seed: int) -> tuple[torch.Tensor, str]:
    """(an n x n orthogonal float64 matrix, its kind): a Hadamard matrix with random signs on its rows, scaled
    to orthogonality, or, where no Hadamard matrix of order n is built here, the Q of a Gaussian's QR."""
    generator = torch.Generator().manual_seed(seed)
    built = hadamard(n)
    if built is None:
        q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))[None, :], "random orthogonal"
    h, kind = built
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    return signs[:, None] * torch.from_numpy(h).double() / n ** 0.5, "randomized " + kind

"""The grid: exactly representable weights are reproduced exactly; spec validation; clipping search."""
import pytest
import torch

from edgeq.quant import grid
from edgeq.errors import EdgeqError
from edgeq.quant.qweight import QuantizedWeight
from edgeq.solvers import get_solver


def representable_weight(n, k, bits, group_size, seed=0):
    """W = s * (q - z) with power-of-two scales and every group spanning the full code range, so min-max
    fitting must recover s and z exactly and RTN must be lossless."""
    gen = torch.Generator().manual_seed(seed)
    maxq = 2 ** bits - 1
    groups = grid.n_groups(k, group_size)
    q = torch.randint(0, maxq + 1, (n, k), generator=gen)
    starts = torch.arange(groups) * group_size
    q[:, starts] = 0                                      # every group holds the lowest code ...
    q[:, torch.clamp(starts + 1, max=k - 1)] = maxq       # ... and the highest one
    scale = 2.0 ** -torch.randint(2, 8, (n, groups), generator=gen).float()
    zero = torch.randint(0, maxq + 1, (n, groups), generator=gen)
    W = grid.dequantize(q, scale, zero, group_size)
    return W, q, scale, zero


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size,k", [(32, 96), (64, 128), (128, 576), (-1, 200)])
def test_rtn_is_lossless_on_representable_asymmetric_weights(bits, group_size, k):
    gs = k if group_size == -1 else group_size
    W, q, scale, zero = representable_weight(6, k, bits, gs)
    qw = get_solver("rtn")(W, None, grid.QuantSpec(bits, group_size, sym=False))
    assert qw.group_size == gs
    assert torch.equal(qw.q.long(), q)
    assert torch.equal(qw.zero.long(), zero)
    assert torch.equal(qw.scale, scale)
    assert torch.equal(qw.dequantize(), W)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_zero_is_the_midpoint_and_representable_weights_survive(bits):
    # GPTQ's symmetric grid: scale = 2 * amax / maxq, zero = 2^(b-1); code 0 lies beyond -amax, so
    # in-range weights use codes 1..maxq. The last column pins amax = s * maxq / 2 (off the grid).
    maxq = 2 ** bits - 1
    s = 2.0 ** -4
    codes = torch.arange(1, maxq + 1).float()
    W = (s * (codes - 2 ** (bits - 1))).repeat(3, 1)
    W[:, -1] = s * maxq / 2  # pins amax so the fitted scale is exactly s (2 * amax / maxq)
    qw = get_solver("rtn")(W, None, grid.QuantSpec(bits, -1, sym=True))
    assert torch.all(qw.zero == 2 ** (bits - 1))
    assert torch.all(qw.scale == s)
    assert torch.equal(qw.dequantize()[:, :-1], W[:, :-1])


def test_partial_last_group_has_its_own_parameters():
    W = torch.randn(4, 576)
    W[:, 512:] *= 100  # the partial group (columns 512..575) lives on another scale entirely
    qw = get_solver("rtn")(W, None, grid.QuantSpec(4, 128))
    assert qw.scale.shape == (4, 5)
    assert torch.all(qw.scale[:, 4] > 20 * qw.scale[:, :4].max(dim=1).values)


def test_all_zero_group_dequantizes_to_zero():
    W = torch.zeros(2, 64)
    W[:, 32:] = torch.randn(2, 32)
    qw = get_solver("rtn")(W, None, grid.QuantSpec(3, 32))
    assert torch.equal(qw.dequantize()[:, :32], torch.zeros(2, 32))


def test_mse_clipping_never_worse_than_minmax_on_heavy_tails():
    torch.manual_seed(0)
    W = torch.distributions.StudentT(2.0).sample((64, 256))
    for bits in (2, 3, 4):
        spec = grid.QuantSpec(bits, 64)
        err = {clip: (get_solver("rtn")(W, None, spec, clip=clip).dequantize() - W).pow(2).sum()
               for clip in ("minmax", "mse")}
        assert err["mse"] < err["minmax"]


def test_importance_weighted_clipping_protects_heavy_inputs():
    """One input carries 500x the activation energy and holds each row's largest weight (SmolLM2's
    down_proj has two such inputs). The weighted search picks from the same candidates as the unweighted
    one, so per row it can only be better on the weighted objective, and clipping that input must lose."""
    torch.manual_seed(0)
    W = torch.distributions.StudentT(2.0).sample((64, 128))
    W[:, 7] = W.abs().amax(dim=1) * 1.5
    importance = torch.ones(128)
    importance[7] = 500.0
    spec = grid.QuantSpec(3, 128)

    def weighted_row_error(scale, zero):
        q = grid.quantize_codes(W, scale, zero, spec.maxq)
        return ((scale * (q - zero) - W).abs() ** 2.4 * importance).sum(dim=1)

    errors = {name: weighted_row_error(*grid.fit_params(W, spec, clip, imp))
              for name, clip, imp in [("minmax", "minmax", None), ("mse", "mse", None),
                                      ("weighted", "mse", importance)]}
    assert torch.all(errors["weighted"] <= errors["mse"]) and torch.all(errors["weighted"] <= errors["minmax"])
    assert errors["weighted"].sum() < 0.5 * errors["mse"].sum()


@pytest.mark.parametrize("bits,group_size", [(1, 128), (9, 128), (4, 48), (4, 8), (4, 0)])
def test_spec_refuses_bad_bits_and_group_sizes(bits, group_size):
    with pytest.raises(EdgeqError):
        grid.QuantSpec(bits, group_size)


def test_quantized_weight_validates_its_fields():
    q = torch.zeros(2, 64, dtype=torch.uint8)
    scale = torch.ones(2, 2)
    zero = torch.zeros(2, 2, dtype=torch.uint8)
    QuantizedWeight(q, scale, zero, 4, 32)
    with pytest.raises(EdgeqError):
        QuantizedWeight(q, torch.ones(2, 3), zero, 4, 32)          # wrong group count
    with pytest.raises(EdgeqError):
        QuantizedWeight(q + 16, scale, zero, 4, 32)                 # code outside 4 bits
    with pytest.raises(EdgeqError):
        QuantizedWeight(q, scale.double(), zero, 4, 32)             # scales must be float32
    with pytest.raises(EdgeqError):
        QuantizedWeight(q, scale, zero, 4, 32, torch.zeros(64, dtype=torch.int64))  # not a permutation


def test_an_input_order_dequantizes_to_the_natural_columns_and_survives_slicing():
    """Held column j is input input_order[j]: x @ W_hat^T == x[:, order] @ W_stored^T."""
    from edgeq.quant.qweight import group_order
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (3, 64), generator=generator, dtype=torch.uint8)
    scale, zero = torch.rand(3, 2, generator=generator) + 0.1, torch.full((3, 2), 128, dtype=torch.uint8)
    order = torch.randperm(64, generator=generator)
    qw = QuantizedWeight(q, scale, zero, 8, 32, order)
    stored = QuantizedWeight(q, scale, zero, 8, 32).dequantize()
    x = torch.randn(5, 64, generator=generator)
    torch.testing.assert_close(x @ qw.dequantize().T, x[:, order] @ stored.T)
    assert torch.equal(qw.codes_in_input_order()[:, order], q)
    assert torch.equal(qw.slice(4).input_order, order)
    g_idx = torch.empty(64, dtype=torch.int64)
    g_idx[order] = torch.arange(64) // 32  # what GPTQ's act-order writes for these held columns
    assert torch.equal(torch.sort(group_order(g_idx, 64, 32, "w")).values, torch.arange(64))
    assert torch.equal(g_idx[group_order(g_idx, 64, 32, "w")], torch.arange(64) // 32)
    assert group_order(torch.arange(64) // 32, 64, 32, "w") is None
    with pytest.raises(EdgeqError, match="equal groups"):
        group_order(torch.zeros(64, dtype=torch.int64), 64, 32, "w")

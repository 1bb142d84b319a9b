"""decoupleQ stage 1: the float step against an explicit least-squares reference; the objective never rises;
integer zero points; better than GPTQ on the layer objective; lossless on representable weights."""
import numpy as np
import pytest
import torch

from edgeq.quant import grid
from edgeq.solvers import decoupleq, get_solver, weighted_error
from tests.test_gptq import correlated_hessian
from tests.test_grid import representable_weight


def design_matrix(codes_row, gs, with_offsets):
    """Columns: q restricted to each group (the scales), then 1 on each group (the offsets)."""
    k = len(codes_row)
    groups = -(-k // gs)
    X = np.zeros((k, groups * (2 if with_offsets else 1)))
    for col in range(k):
        X[col, col // gs] = codes_row[col]
        if with_offsets:
            X[col, groups + col // gs] = 1.0
    return X


def weighted_lstsq(X, w, H):
    return np.linalg.solve(X.T @ H @ X, X.T @ H @ w)


@pytest.mark.parametrize("k,gs", [(96, 32), (80, 32), (64, 64)])  # 80: a partial last group
def test_float_steps_equal_explicit_weighted_least_squares(k, gs):
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(5, k, generator=gen)
    q = torch.randint(0, 4, (5, k), generator=gen).float()
    H = correlated_hessian(k).double()
    s, t = decoupleq.solve_scale_and_offset(W, q, H.float(), gs)
    a = q - 1.0
    scales = decoupleq.solve_scales(W, a, H.float(), gs)
    Hn = H.numpy()
    for r in range(5):
        ref = weighted_lstsq(design_matrix(q[r].numpy(), gs, True), W[r].double().numpy(), Hn)
        np.testing.assert_allclose(torch.cat([s[r], t[r]]).numpy(), ref, rtol=2e-3, atol=1e-4)
        ref_s = weighted_lstsq(design_matrix(a[r].numpy(), gs, False), W[r].double().numpy(), Hn)
        np.testing.assert_allclose(scales[r].numpy(), ref_s, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("spec", [grid.QuantSpec(2, 64), grid.QuantSpec(3, 32), grid.QuantSpec(4, -1),
                                  grid.QuantSpec(2, 64, sym=True)], ids=str)
def test_objective_never_rises_and_beats_gptq(spec):
    k = 256
    H = correlated_hessian(k)
    W = torch.randn(48, k, generator=torch.Generator().manual_seed(1)) * 0.05
    trace = []
    qw = get_solver("decoupleq")(W, H, spec, trace=trace)
    assert len(trace) >= 2 and all(b <= a for a, b in zip(trace, trace[1:]))
    assert trace[-1] < trace[0]
    assert torch.equal(qw.zero, qw.zero.round()) and qw.zero.min() >= 0 and qw.zero.max() <= spec.maxq
    assert torch.all(qw.scale > 0)
    gptq = get_solver("gptq")(W, H, spec)
    assert weighted_error(W, qw.dequantize(), H) < weighted_error(W, gptq.dequantize(), H)


def test_lossless_on_representable_weights():
    W, q, scale, zero = representable_weight(8, 256, 2, 64)
    qw = get_solver("decoupleq")(W, correlated_hessian(256), grid.QuantSpec(2, 64))
    assert torch.allclose(qw.dequantize(), W, atol=1e-6)


def test_tiny_model_through_pipeline_checkpoint_and_export(tiny_model_dir, tmp_path):
    """The result is an ordinary QuantizedWeight: the checkpoint and the exporter take it unchanged."""
    from edgeq import api
    from edgeq.io import checkpoint
    from edgeq.export.onnx import export
    from tests.conftest import calibration_text
    out = tmp_path / "w2"
    meta = api.quantize(str(tiny_model_dir), out, api.QuantConfig(method="decoupleq", bits=2, group_size=32,
                                                                  samples=4, seq_len=64),
                        calib=str(calibration_text()), progress=False)
    assert meta["method"] == "decoupleq" and len(meta["layers"]) == 21
    report = export(str(out), tmp_path / "onnx", accuracy_level=0)
    assert len(report["layers"]) == 21 and report["matmulnbits_nodes"] == 12 and report["parity_relative_logit_error"] < 1e-5
    _, qweights, _ = checkpoint.load_checkpoint(out)
    assert all(qw.bits == 2 and qw.zero.max() <= 3 for qw in qweights.values())


def test_block_training_lowers_the_block_output_error(tiny_model_dir, tmp_path):
    """Stage 2 on the tiny model: per block, the output MSE after training is below the first epoch's."""
    from edgeq import api
    from tests.conftest import calibration_text
    meta = api.quantize(str(tiny_model_dir), tmp_path / "w2", api.QuantConfig(
        method="decoupleq", bits=2, group_size=32, samples=8, seq_len=64, block_epochs=3, block_lr=1e-2),
        calib=str(calibration_text()), progress=False)
    losses = meta["block_losses"]
    assert sorted(losses) == ["0", "1", "2"]
    for block, (first, *_, after) in losses.items():
        assert after < first, (block, losses[block])
    assert meta["stats"]["seconds_block_training"] > 0

"""MatQuant: bit slicing against its definition, the nested sweep kernels against a brute-force reference,
the solver against GPTQ where they must agree, and one int8 checkpoint exported and sliced at every width."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeq import api
from edgeq.io import checkpoint
from edgeq.quant import grid, nesting
from edgeq.planning import mixnmatch
from edgeq.cli import main
from edgeq.errors import EdgeqError
from edgeq.export.onnx import export
from edgeq.kernels import nested_block
from edgeq.kernels.nested_numba import nested_block_numba
from edgeq.quant.qweight import QuantizedWeight
from edgeq.runtime.session import MODEL_FILE, OrtDecoder
from edgeq.runtime.slicing import nested_widths, slice_model, sliceable_nodes
from edgeq.solvers import get_solver, weighted_error
from edgeq.solvers.matquant import fit_nested_params
from tests.conftest import calibration_text
from tests.test_kernels import random_block


def test_slice_codes_is_rounded_top_bits_clamped():
    for bits in range(2, 8):
        d = 8 - bits
        want = [min(int(np.floor(q / 2 ** d + 0.5)), 2 ** bits - 1) for q in range(256)]
        assert nesting.slice_codes(np.arange(256, dtype=np.int16), 8, bits).tolist() == want


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_exactly_representable_codes_slice_without_loss(bits):
    """Codes that are multiples of 2^d (and zero 128) give back the same weight at `bits` bits."""
    rng = np.random.default_rng(bits)
    d = 8 - bits
    q_r = rng.integers(0, 2 ** bits, (6, 64))
    qw = QuantizedWeight(torch.from_numpy((q_r << d).astype(np.uint8)),
                         torch.from_numpy(rng.uniform(0.01, 0.1, (6, 2)).astype(np.float32)),
                         torch.full((6, 2), 128, dtype=torch.uint8), 8, 32)
    sliced = qw.slice(bits)
    assert sliced.bits == bits and torch.equal(sliced.q, torch.from_numpy(q_r.astype(np.uint8)))
    assert torch.equal(sliced.zero, torch.full((6, 2), 2 ** (bits - 1), dtype=torch.uint8))  # symmetric 128 -> 2^(r-1)
    torch.testing.assert_close(sliced.dequantize(), qw.dequantize(), rtol=0, atol=0)


def test_zero_points_must_be_nested_to_slice():
    qw = QuantizedWeight(torch.zeros(2, 32, dtype=torch.uint8), torch.ones(2, 1),
                         torch.tensor([[128], [96]], dtype=torch.uint8), 8, 32)
    assert qw.slice(4).zero.tolist() == [[8], [6]]  # 96 = 6 x 16
    with pytest.raises(EdgeqError, match="not multiples of 64"):
        qw.slice(2)
    with pytest.raises(EdgeqError, match="cannot slice"):
        qw.slice(4).slice(8)


def test_runs_of_constant_slices_partition_the_codes():
    loss = nesting.MultiWidthLoss.of([8, 4, 2])
    assert loss.lo[0] == 0 and loss.hi[-1] == 255 and np.all(loss.lo[1:] == loss.hi[:-1] + 1)
    for j, (lo, hi) in enumerate(zip(loss.lo.astype(int), loss.hi.astype(int))):
        codes = np.arange(lo, hi + 1, dtype=np.int16)
        for t, bits in enumerate(loss.low_bits):
            assert np.all((nesting.slice_codes(codes, 8, bits) << (8 - bits)) == loss.values[j, t])


def naive_nested_block(W1, Hinv1, scale, zero, widths, weights):
    """Brute force: every row, every column, all 256 codes scored on every width's own compensated weight."""
    n = scale.shape[0]
    W = W1.astype(np.float64).reshape(len(widths), n, -1).copy()
    codes = np.arange(256)
    slices = [nesting.slice_codes(codes.astype(np.int16), 8, b) << (8 - b) for b in widths]
    Q = np.zeros((n, W.shape[2]))
    for i in range(W.shape[2]):
        for r in range(n):
            s, z = np.float64(scale[r, i]), np.float64(zero[r, i])
            u = [np.float64(np.float32(W[t, r, i] / s + z)) for t in range(len(widths))]
            cost = sum(w * (u[t] - slices[t]) ** 2 for t, w in enumerate(weights))
            c = int(np.argmin(cost))
            Q[r, i] = c
            for t in range(len(widths)):
                err = s * (u[t] - slices[t][c]) / Hinv1[i, i]
                W[t, r, i + 1:] -= err * Hinv1[i, i + 1:]
    return Q, W.reshape(W1.shape)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_nested_kernel_matches_brute_force(backend):
    W1, Hinv1, _, _, _ = random_block(n=3 * 11, b=24, seed=5)
    scale = np.full((11, 24), 0.02, np.float32)
    zero = np.full((11, 24), 128, np.float32)
    loss = nesting.MultiWidthLoss.of([8, 4, 2], [1.0, 2.0, 0.5])
    Q_ref, W_ref = naive_nested_block(W1, Hinv1, scale, zero, [8, 4, 2], [1.0, 2.0, 0.5])
    W_t = torch.from_numpy(W1.copy())
    Q, _ = nested_block(W_t, *(torch.from_numpy(a) for a in (Hinv1, scale, zero)), loss, backend)
    for t in range(3):
        np.testing.assert_array_equal(Q.numpy()[t * 11:(t + 1) * 11], Q_ref)
    np.testing.assert_allclose(W_t.numpy(), W_ref, rtol=1e-4, atol=1e-4)


def test_numba_nested_wrapper_validates_shapes():
    W1, Hinv1, _, _, _ = random_block(n=22, b=8)
    loss = nesting.MultiWidthLoss.of([8, 4, 2])
    scale = np.ones((11, 8), np.float32)
    with pytest.raises(ValueError, match="W1"):
        nested_block_numba(W1, Hinv1, scale, scale, loss)  # 2 x 11 rows for 3 widths


def correlated_layer(n=48, k=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(2048, k, generator=gen) @ (torch.eye(k) + 0.3 * torch.randn(k, k, generator=gen) / k ** 0.5)
    return torch.randn(n, k, generator=gen) * 0.05, X.T @ X / X.shape[0]


def test_one_width_is_exactly_gptq():
    """With a single width there is nothing to nest: the solver must be GPTQ (same grid, same sweep)."""
    W, H = correlated_layer()
    spec = grid.QuantSpec(4, 32, sym=True)
    mq = get_solver("matquant")(W, H, spec, widths=[4], clip="minmax")
    gq = get_solver("gptq")(W, H, spec, clip="minmax")
    assert torch.equal(mq.q, gq.q) and torch.equal(mq.scale, gq.scale) and torch.equal(mq.zero, gq.zero)


def test_nested_codes_beat_slicing_plain_int8_at_the_low_widths():
    W, H = correlated_layer(seed=1)
    spec = grid.QuantSpec(8, 32, sym=True)
    naive = get_solver("gptq")(W, H, spec)
    mq = get_solver("matquant")(W, H, spec)
    err = {name: {b: weighted_error(W, qw.slice(b).dequantize(), H) for b in (8, 4, 2)}
           for name, qw in (("naive", naive), ("mq", mq))}
    assert sum(err["mq"].values()) < 0.9 * sum(err["naive"].values())  # the objective it minimises
    assert err["mq"][2] < 0.9 * err["naive"][2]
    assert (mq.zero.int() % 64 == 0).all()  # every slice keeps an integer zero point


def test_asymmetric_zero_points_are_nested_too():
    W, H = correlated_layer(seed=2)
    W = W + 0.03  # off-centre rows: asymmetric zero points move off 128
    mq = get_solver("matquant")(W, H, grid.QuantSpec(8, 32), widths=[8, 4, 2])
    assert (mq.zero.int() % 64 == 0).all() and mq.zero.int().ne(128).any()
    assert mq.slice(2).zero.max() <= 3


def test_nested_min_max_grid_holds_every_weight_at_its_rounded_zero_point():
    """Rounding a min-max zero point to a multiple of 64 used to shift the range off one end of the codes
    (up to 32 master codes clipped); the scale must be refitted at the zero point it rounds to."""
    W, _ = correlated_layer(seed=3)
    W = W + torch.linspace(-0.05, 0.05, W.shape[0])[:, None]  # rows off centre in both directions
    spec = grid.QuantSpec(8, 32)
    scale, zero = fit_nested_params(W, spec, nesting.MultiWidthLoss.of((8, 4, 2)), 2, "minmax")
    u = W / grid.expand_groups(scale, 32, W.shape[1]) + grid.expand_groups(zero, 32, W.shape[1])
    assert (zero.int() % 64 == 0).all() and zero.int().ne(128).any()
    assert u.min() >= -0.5 - 1e-4 and u.max() <= 255.5 + 1e-4


def test_mse_nested_grid_may_widen_the_range_for_the_narrow_slices():
    """The int2 slice's top level is master code 192: a grid filling all 256 codes clips the top quarter
    at 2 bits, so the search must be able to widen the scale (p > 1), and on real-shaped weights it does."""
    W, H = correlated_layer(seed=4)
    spec = grid.QuantSpec(8, 32)
    loss = nesting.MultiWidthLoss.of((8, 4, 2))
    importance = torch.diag(H)
    tight, _ = fit_nested_params(W, spec, loss, 2, "minmax", importance)
    searched, _ = fit_nested_params(W, spec, loss, 2, "mse", importance)
    assert (searched > tight * 1.01).any()


def test_bits_must_be_the_widest_width():
    W, H = correlated_layer()
    with pytest.raises(EdgeqError, match="bits must be 8"):
        get_solver("matquant")(W, H, grid.QuantSpec(4, 32), widths=[8, 4])


@pytest.fixture(scope="module")
def tiny_matquant(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mq") / "ckpt"
    api.quantize(str(tiny_model_dir), out, api.QuantConfig(method="matquant", bits=8, group_size=32, samples=4,
                 seq_len=64, solver_opts={"widths": [8, 4, 2], "weights": [1, 1, 1]}),
                 calib=str(calibration_text()), progress=False)
    return out


def test_checkpoint_stores_int8_once_and_loads_any_slice(tiny_matquant):
    meta = checkpoint.read_meta(tiny_matquant)
    assert {layer["bits"] for layer in meta["layers"].values()} == {8}
    _, q8, _ = checkpoint.load_checkpoint(tiny_matquant)
    model4, q4, _ = checkpoint.load_checkpoint(tiny_matquant, bits=4)
    name = next(iter(q8))
    assert q4[name].bits == 4 and torch.equal(q4[name].q, q8[name].slice(4).q)
    assert torch.equal(dict(model4.named_parameters())[f"{name}.weight"], q4[name].dequantize())


def initializers(folder):
    proto = onnx.load(str(folder / MODEL_FILE))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return proto, inits


@pytest.mark.parametrize("bits", [4, 2])
def test_device_slicing_of_the_int8_export_equals_exporting_the_slice(tiny_matquant, tmp_path, bits):
    export(str(tiny_matquant), tmp_path / "int8", accuracy_level=0)
    report = export(str(tiny_matquant), tmp_path / "sliced", accuracy_level=0, bits=bits)
    assert {layer["bits"] for layer in report["layers"].values()} == {bits} and report["sliced_to_bits"] == bits
    proto8, _ = initializers(tmp_path / "int8")
    assert nested_widths(proto8) == [8, 4, 2] and len(sliceable_nodes(proto8)) == 4 * 3
    slice_model(proto8, bits)
    exported_proto, exported = initializers(tmp_path / "sliced")
    on_device = {t.name: numpy_helper.to_array(t) for t in proto8.graph.initializer}
    assert exported.keys() == on_device.keys()
    for name, array in exported.items():
        np.testing.assert_array_equal(on_device[name], array, err_msg=name)
    bits_of = lambda p: sorted(a.i for n in p.graph.node if n.op_type == "MatMulNBits"  # noqa: E731
                               for a in n.attribute if a.name == "bits")
    assert bits_of(proto8) == bits_of(exported_proto)
    prompt = np.array([[5, 17, 300, 42]])
    sliced = OrtDecoder.from_folder(tmp_path / "int8", bits=bits)
    reference = OrtDecoder.from_folder(tmp_path / "sliced")
    np.testing.assert_array_equal(sliced.forward(prompt, sliced.empty_past())[0],
                                  reference.forward(prompt, reference.empty_past())[0])


@pytest.mark.parametrize("budget", [3.0, 5.5])
def test_mixnmatch_on_the_device_equals_exporting_the_checkpoint_at_that_budget(tiny_matquant, tmp_path, budget):
    """One int8 file, a width per node planned from its metadata with numpy alone, is byte for byte the
    export of the checkpoint sliced by the same budget; the plan meets the budget and mixes widths."""
    export(str(tiny_matquant), tmp_path / "int8", accuracy_level=0)
    report = export(str(tiny_matquant), tmp_path / "planned", accuracy_level=0, bits=budget)
    proto8, _ = initializers(tmp_path / "int8")
    widths = slice_model(proto8, budget)
    _, exported = initializers(tmp_path / "planned")
    on_device = {t.name: numpy_helper.to_array(t) for t in proto8.graph.initializer}
    assert exported.keys() == on_device.keys()
    for name, array in exported.items():
        np.testing.assert_array_equal(on_device[name], array, err_msg=name)
    sizes = {n.name: n.attribute[[a.name for a in n.attribute].index("N")].i
             * n.attribute[[a.name for a in n.attribute].index("K")].i for n in proto8.graph.node if n.name in widths}
    assert mixnmatch.average_bits(widths, sizes) <= budget and len(set(widths.values())) > 1
    assert {layer["bits"] for layer in report["layers"].values()} == set(widths.values())


def test_nested_checkpoints_store_what_each_slice_costs(tiny_matquant):
    meta = checkpoint.read_meta(tiny_matquant)
    record = meta["slice_estimates"]
    assert record["estimator"] == "fisher" and record["widths"] == [8, 4, 2]
    assert record["layers"].keys() == meta["layers"].keys()
    assert all(0 <= e8 < e4 < e2 for e8, e4, e2 in record["layers"].values())


def test_eval_at_an_average_width_runs_on_the_checkpoint_and_the_export(tiny_matquant, tmp_path, capsys):
    export(str(tiny_matquant), tmp_path / "int8", accuracy_level=0)
    text = str(calibration_text())
    for model in (tiny_matquant, tmp_path / "int8"):
        assert main(["eval", str(model), "--bits", "4.5", "--max-windows", "1", "--seq-len", "32",
                     "--text", text, "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["eval", str(tiny_matquant), "--bits", "1.5"])
    assert "bits must be from 2 to 8, got '1.5'" in capsys.readouterr().err


def test_a_budget_needs_slice_estimates(tiny_checkpoint, tmp_path):
    with pytest.raises(EdgeqError, match="no slice estimates"):
        checkpoint.load_checkpoint(tiny_checkpoint, 3.0)


def test_sliced_onnx_perplexity_equals_torch(tiny_matquant, tmp_path):
    export(str(tiny_matquant), tmp_path / "int8", accuracy_level=0)
    text = str(calibration_text())
    for bits in (8, 4, 2):
        ort_ppl = api.evaluate(str(tmp_path / "int8"), text, 64, 2, progress=False, bits=bits)["perplexity"]
        torch_ppl = api.evaluate(str(tiny_matquant), text, 64, 2, progress=False, bits=bits)["perplexity"]
        assert ort_ppl == pytest.approx(torch_ppl, rel=1e-4)


def test_device_example_picks_a_width_and_generates(tiny_matquant, tmp_path):
    export(str(tiny_matquant), tmp_path / "int8", accuracy_level=0)
    example = Path(__file__).resolve().parents[1] / "examples" / "slice_on_device.py"
    for bits in ("2", "auto", "3.5"):
        run = subprocess.run([sys.executable, str(example), str(tmp_path / "int8"), "--bits", bits,
                              "--max-new-tokens", "3"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "int2:" in run.stdout and "running " in run.stdout
        assert bits == "auto" or f"running {bits} bits" in run.stdout
    assert "widths: int2" in run.stdout and "int8" in run.stdout.split("widths:")[1]


def test_plain_exports_cannot_be_sliced(tiny_checkpoint, tmp_path):
    export(str(tiny_checkpoint), tmp_path / "w4", accuracy_level=0)
    with pytest.raises(EdgeqError, match="no sliceable nodes"):
        OrtDecoder.from_folder(tmp_path / "w4", bits=2)


@pytest.mark.parametrize("argv, message", [
    (["--method", "matquant", "--bits", "4"], "bits must be 8 for widths [8, 4, 2]"),
    (["--method", "matquant", "--weights", "1,1"], "need one non-negative weight per width (3)"),
    (["--method", "gptq", "--widths", "8,4"], "--widths does not apply to gptq; it applies to matquant, matround"),
])
def test_cli_refuses_inconsistent_matquant_flags(argv, message, tmp_path, capsys):
    assert main(["quantize", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_eval_bits_needs_something_to_slice(capsys):
    assert main(["eval", "--bits", "4", "--max-windows", "1"]) == 2
    assert "slices a quantized checkpoint" in capsys.readouterr().err


def test_block_training_lowers_the_multi_width_block_loss(tiny_model_dir, tmp_path):
    """The scales of each block trained for the weighted loss of all three slices: it must fall."""
    meta = api.quantize(str(tiny_model_dir), tmp_path / "mq", api.QuantConfig(
        method="matquant", bits=8, group_size=32, samples=8, seq_len=64, block_epochs=3, block_lr=1e-2,
        solver_opts={"widths": [8, 4, 2], "weights": [4, 4, 1]}), calib=str(calibration_text()), progress=False)
    for block, losses in meta["block_losses"].items():
        assert losses[2] < losses[0], (block, losses)  # epochs' weighted losses (the last entry is int8 only)
    _, q2, _ = checkpoint.load_checkpoint(tmp_path / "mq", bits=2)
    assert all(qw.bits == 2 for qw in q2.values())


def test_bench_runs_a_slice_of_the_int8_export(tiny_matquant, tmp_path):
    """`edgeq bench DIR@4`: the width is split off before the folder is checked (it was refused as
    'no model.onnx')."""
    from edgeq.runtime import bench
    export(str(tiny_matquant), tmp_path / "int8", accuracy_level=0)
    # no process-wide pool: it would bind every later test's sessions to one thread
    settings = bench.Settings(prompt=4, gen=2, runs=1, warmup=0, threads=1, shared_pool=False)
    full, sliced, planned = bench.bench([tmp_path / "int8", f"{tmp_path / 'int8'}@4", f"{tmp_path / 'int8'}@3.5"],
                                        settings)
    assert len(full.decode) == len(sliced.decode) == len(planned.decode) == 2
    assert bench.split_width(f"{tmp_path}@3.5") == (str(tmp_path), 3.5)
    with pytest.raises(EdgeqError):
        bench.bench([f"{tmp_path / 'missing'}@4"], settings)

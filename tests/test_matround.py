"""matround: MatQuant's nested int8 codes learned on the block engine. What it trains on is exactly the
slice the checkpoint, the exporter and the device cut; untrained it is round-to-nearest on matquant's
grid; its offset can move a 2-bit slice; a real run learns every block and exports sliceable codes."""
import json

import pytest
import torch

from edgeq import api, cli
from edgeq.io import checkpoint
from edgeq.quant import grid, nesting
from edgeq.errors import EdgeqError
from edgeq.export.onnx import export
from edgeq.solvers import get_method
from edgeq.solvers.matquant import fit_nested_params
from tests.conftest import calibration_text

SPECS = [(grid.QuantSpec(8, 32, sym=True), (8, 4, 2)), (grid.QuantSpec(8, -1), (8, 4, 2)),
         (grid.QuantSpec(6, 16, sym=True), (6, 3))]


def nested(W, spec, widths):
    return get_method("matround").rounding(W, spec, widths=widths)


def weights(n=24, k=96, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec, widths", SPECS, ids=str)
def test_each_trained_slice_is_exactly_the_stored_codes_slice(spec, widths):
    rounding = nested(weights(), spec, widths)
    for moved in (False, True):
        if moved:
            with torch.no_grad():
                rounding.offset.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(1))
        qw = rounding.result()
        assert qw.bits == spec.bits and torch.all(qw.zero % nesting.zero_step(spec.bits, min(widths)) == 0)
        for bits in widths:
            sliced = qw if bits == spec.bits else qw.slice(bits)
            assert torch.equal(sliced.dequantize(), rounding.weight(bits).detach()), (bits, moved)


def test_untrained_codes_are_round_to_nearest_on_matquants_grid():
    W, spec = weights(), grid.QuantSpec(8, 32, sym=True)
    scale, zero = fit_nested_params(W, spec, nesting.MultiWidthLoss.of((8, 4, 2)), 2, "mse")
    expand = lambda x: grid.expand_groups(x, 32, W.shape[1])  # noqa: E731
    expected = torch.clamp(torch.floor(W / expand(scale) + 0.5) + expand(zero), 0, 255)
    qw = nested(W, spec, (8, 4, 2)).result()
    assert torch.equal(qw.q.float(), expected) and torch.equal(qw.scale, scale.float())


def test_the_offset_is_counted_in_the_narrowest_slices_steps():
    """V = 1/2 moves a master code by half a 2-bit step (32 int8 codes): enough to change the int2 slice,
    which an offset in int8 units (SignRound's box) never could."""
    W = weights()
    rounding = nested(W, grid.QuantSpec(8, 32, sym=True), (8, 4, 2))
    before = rounding.result()
    with torch.no_grad():
        rounding.offset.fill_(0.5)
    after = rounding.result()
    unclamped = (before.q > 0) & (before.q.long() <= 255 - 32)  # the MSE grid clips some weights to 0 and 255
    assert unclamped.float().mean() > 0.8
    moved = (after.q.long() - before.q.long())[unclamped]
    assert torch.all((moved - 32).abs() <= 1) and (moved == 32).float().mean() > 0.99  # float32 ties aside
    assert (after.slice(2).q != before.slice(2).q).float().mean() > 0.3  # half a 2-bit step: ~40%


def test_bits_must_be_the_widest_width():
    with pytest.raises(EdgeqError, match="bits must be 8"):
        nested(weights(), grid.QuantSpec(4, 32), (8, 4, 2))


def test_every_block_learns_and_every_slice_exports(tiny_model_dir, tmp_path):
    config = api.QuantConfig(method="matround", bits=8, group_size=32, sym=True, samples=6, seq_len=64,
                             batch_size=2, solver_opts={"steps": 12, "widths": [8, 4, 2], "weights": [4, 4, 1]})
    meta = api.quantize(str(tiny_model_dir), tmp_path / "ckpt", config, calib=str(calibration_text()),
                        progress=False)
    assert all(r["best"] < r["first"] for r in meta["block_losses"].values()), meta["block_losses"]
    _, q8, _ = checkpoint.load_checkpoint(tmp_path / "ckpt")
    _, q2, _ = checkpoint.load_checkpoint(tmp_path / "ckpt", bits=2)
    assert {qw.bits for qw in q8.values()} == {8} and {qw.bits for qw in q2.values()} == {2}
    report = export(str(tmp_path / "ckpt"), tmp_path / "onnx4", accuracy_level=0, bits=4)
    assert report["parity_relative_logit_error"] < 1e-5 and report["sliced_to_bits"] == 4


def test_cli_gives_matround_matquants_widths_and_nested_asymmetric_grid(tiny_model_dir, tmp_path):
    assert cli.main(["quantize", str(tiny_model_dir), "--out", str(tmp_path / "ck"), "--method", "matround",
                     "--widths", "8,2", "--steps", "2", "--group-size", "32", "--samples", "4", "--seq-len", "64",
                     "--calib", str(calibration_text()), "--quiet"]) == 0
    meta = json.loads((tmp_path / "ck" / "quantization.json").read_text())
    assert meta["bits"] == 8 and meta["sym"] is False
    assert meta["solver_opts"] == {"steps": 2, "widths": [8, 2]}  # what was asked; the rest are the record's
    assert get_method("matround").resolve(meta["solver_opts"]).weights is None  # nesting's default: all 1


@pytest.mark.parametrize("argv, message", [
    (["--method", "matround", "--bits", "4"], "matround stores the widest width"),
    (["--method", "matround", "--no-act-order"], "--no-act-order does not apply to matround; it applies to gptq, matquant"),
    (["--method", "matround", "--budget", "3.0"], "matround stores one width for every linear, sliced to the others"),
])
def test_cli_refuses_flags_matround_would_ignore(argv, message, tmp_path, capsys):
    assert cli.main(["quantize", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()

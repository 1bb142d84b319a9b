"""--transform awq: the folded scales leave the float model's logits as they were in every family it supports,
the search never picks a scaling worse than none, and under RTN (AWQ itself) the output error of the linears
it scales goes down; an awq checkpoint exports at level-0 parity and resumes to the same result."""
import json

import pytest
import torch

from edgeq import api
from edgeq.calib.capture import hessian_hooks
from edgeq.errors import EdgeqError
from edgeq.io import checkpoint
from edgeq.io.architectures import get_module
from edgeq.io.models import arch_of
from edgeq.quant import grid
from edgeq.transforms import apply_transforms, awq
from tests.conftest import FAMILIES, calibration_text, edgeq_cli, tiny_family_model


def block_stats(model, arch, ids):
    """{first linear of a group: (H, mean |x|)} of every block, from one float forward with outlier channels."""
    blocks = get_module(model, arch.blocks)
    per_block = []
    for block in blocks:
        accumulators, remove = hessian_hooks(block, arch, "cpu", track_abs=True)
        per_block.append((accumulators, remove))
    with torch.no_grad():
        model(ids)
    stats = []
    for accumulators, remove in per_block:
        remove()
        stats.append({name: (acc.hessian(), acc.mean_abs()) for name, acc in accumulators.items()})
    return stats


def with_outlier_channels(model, arch):
    """Make a few residual channels large (real LLMs have them; a random init has none), so awq scales."""
    with torch.no_grad():
        get_module(model, arch.embed).weight[:, :4] *= 30


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma3_text"])
def test_awq_scales_leave_the_float_logits_unchanged(family):
    model = tiny_family_model(family)
    arch = arch_of(model.config)
    with_outlier_channels(model, arch)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    stats = block_stats(model, arch, ids)
    spec = grid.QuantSpec(3, 16)
    records = []
    for block, block_stat in zip(get_module(model, arch.blocks), stats):
        scales, record = awq.scale_block(block, arch, model.config, block_stat, lambda n, W: spec)
        records.append(record)
        for name, s in scales.items():
            assert s.shape == block_stat[name][1].shape and bool((s > 0).all())
    with torch.no_grad():
        out = model(ids).logits
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    ratios = [group["error_ratio"] for record in records for group in record.values()]
    assert max(ratios) <= 1.0  # alpha = 0 (no scaling) is on the grid
    assert any(group["alpha"] > 0 for record in records for group in record.values())  # not a no-op


def test_the_scaled_hessian_is_the_hessian_of_the_scaled_inputs():
    from edgeq.calib.capture import HessianAccumulator
    x = torch.randn(50, 8)
    s = torch.rand(8) + 0.5
    a, b = HessianAccumulator(8, "cpu", track_abs=True), HessianAccumulator(8, "cpu", track_abs=True)
    a.add(x)
    a.rescale_inputs(s)
    b.add(x / s)
    assert torch.allclose(a.hessian(), b.hessian(), atol=1e-5) and torch.allclose(a.mean_abs(), b.mean_abs())


def rtn_run(folder, out, transforms=()):
    config = api.QuantConfig(method="rtn", bits=3, group_size=32, samples=6, seq_len=64, batch_size=4,
                             transforms=transforms)
    calib = str(calibration_text()) if transforms else None  # plain RTN reads no calibration
    return api.quantize(str(folder), out, config, calib=calib, progress=False)


def test_awq_under_rtn_lowers_the_output_error_of_what_it_scales():
    """Recomputed outside the search: RTN's output error of o and down after the fold (scaled weights, the
    rescaled Hessian) against before (the float weights, the Hessian as captured)."""
    model = tiny_family_model("llama")
    arch = arch_of(model.config)
    with_outlier_channels(model, arch)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    block, stat = get_module(model, arch.blocks)[0], block_stats(model, arch, ids)[0]
    spec = grid.QuantSpec(3, 16)
    names = (arch.attention_out, arch.down)
    before = {n: awq.output_error([(get_module(block, n).weight.data.clone(), spec)], stat[n][0], torch.ones(1))
              for n in names}
    scales, record = awq.scale_block(block, arch, model.config, stat, lambda n, W: spec)
    for n in names:
        s = scales[n]
        after = awq.output_error([(get_module(block, n).weight.data, spec)], stat[n][0] / s[:, None] / s[None, :],
                                 torch.ones(1))
        assert after <= before[n] * (1 + 1e-5) and after == pytest.approx(before[n] * record[n]["error_ratio"],
                                                                          rel=1e-3), n
    assert min(record[n]["error_ratio"] for n in names) < 0.99


def test_awq_runs_under_rtn_with_calibration(tiny_model_dir, tmp_path):
    config = api.QuantConfig(method="rtn", bits=3, group_size=32, samples=6, seq_len=64, batch_size=4,
                             transforms=("awq",))
    meta = api.quantize(str(tiny_model_dir), tmp_path / "awq", config, calib=str(calibration_text()), progress=False)
    assert meta["transforms"][-1]["name"] == "awq" and set(meta["transforms"][-1]["blocks"]) == {"0", "1", "2"}
    assert meta["calibration"] is not None


def test_awq_checkpoint_exports_at_level0_parity(tiny_model_dir, tmp_path):
    out = tmp_path / "awq"
    edgeq_cli("quantize", tiny_model_dir, "--method", "gptq", "--group-size", "32", "--samples", "8", "--seq-len",
              "32", "--transform", "rotate", "--transform", "awq", "--out", out, "--quiet")
    meta = json.loads((out / "quantization.json").read_text())
    assert [t["name"] for t in meta["transforms"]] == ["rotate", "awq"]
    printed = edgeq_cli("export", out, "--out", tmp_path / "onnx", "--accuracy-level", "0")
    assert float(printed.split("relative error ")[1].split()[0]) < 2e-3, printed


class Interrupt(Exception):
    pass


def test_an_interrupted_awq_run_resumes_to_the_same_checkpoint(tiny_model_dir, tmp_path):
    config = api.QuantConfig(method="gptq", bits=3, group_size=32, samples=6, seq_len=64, batch_size=4,
                             transforms=("awq",))
    run = lambda out, **kw: api.quantize(str(tiny_model_dir), out, config, calib=str(calibration_text()),
                                         progress=False, **kw)
    run(tmp_path / "ref")

    def stop_after_block_0(i):
        if i == 0:
            raise Interrupt
    with pytest.raises(Interrupt):
        run(tmp_path / "run", on_block_done=stop_after_block_0)
    assert run(tmp_path / "run")["stats"]["resumed_from_block"] == 1
    a = (tmp_path / "ref" / checkpoint.WEIGHTS_FILE).read_bytes()
    assert a == (tmp_path / "run" / checkpoint.WEIGHTS_FILE).read_bytes()  # the scaled norms came back too


def test_awq_is_refused_where_it_does_not_apply(tiny_model_dir, tmp_path):
    model = tiny_family_model("gemma3_text")
    with pytest.raises(EdgeqError, match="awq does not apply to gemma3_text"):
        apply_transforms(model, arch_of(model.config), ["awq"], 0)
    config = api.QuantConfig(method="matquant", bits=8, group_size=32, transforms=("awq",))
    with pytest.raises(EdgeqError, match="awq does not apply to matquant"):
        api.quantize(str(tiny_model_dir), tmp_path / "m", config, progress=False)
    assert not (tmp_path / "m").exists()

"""--true-sequential: each input group's Hessian is taken on the block with its earlier groups quantized (the
default takes every group's from the float block), checked against the inputs transformers' own forward gives
the linear once those groups' weights are put into the float model; with --correct-upstream the float side of each
pair stays the float model's."""
import dataclasses

import pytest
import torch

from edgeq import api
from edgeq.calib import pipeline
from edgeq.calib.capture import HessianAccumulator
from edgeq.calib.upstream import CrossAccumulator, Upstream
from edgeq.io import models
from edgeq.quant import grid
from edgeq.solvers.gptq import GPTQOptions
from edgeq.solvers.method import get_method, register, unregister
from tests.conftest import quantize_in_memory
from tests.test_pipeline import assert_refused, quantize_tiny

SPEC = grid.QuantSpec(2, 32)
O_PROJ_0, GATE_0, DOWN_0, Q_PROJ_1 = 3, 4, 6, 7  # solve calls in order: q k v o gate up down per block


@pytest.fixture
def solves():
    """gptq under another name, recording the (target W, H) of every solve in order."""
    seen, gptq = [], get_method("gptq")
    solve = gptq.implementation()

    def spy(W, H, spec, **opts):
        seen.append((W.clone(), H.clone()))
        return solve(W, H, spec, **opts)
    register(dataclasses.replace(gptq, name="spy-gptq", entry=spy))
    yield seen
    unregister("spy-gptq")


def _run(model_dir, tokenizer, **fields):
    recipe = pipeline.Recipe.of("spy-gptq", SPEC, {}, batch_size=4, **fields)
    return quantize_in_memory(model_dir, tokenizer, recipe)


def _inputs(model, windows, linear: str) -> torch.Tensor:
    """The linear's inputs over the windows in transformers' forward of the model as it is."""
    caught = []
    handle = models.get_module(model, linear).register_forward_pre_hook(lambda m, args: caught.append(args[0]))
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    handle.remove()
    return caught[0]


def _hessian(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[-1], "cpu")
    acc.add(x)
    return acc.hessian()


def _with_weights(model_dir, quantized, linears: list[str]):
    """The float model with these linears' weights taken from the quantized one."""
    model, _ = models.load_model(models.resolve_source(str(model_dir)))
    for name in linears:
        models.get_module(model, name).weight.data = models.get_module(quantized, name).weight.data.clone()
    return model


QKV_0 = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
GATE_UP_0 = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]


def test_each_group_is_solved_on_the_inputs_of_the_block_with_its_earlier_groups_quantized(
        tiny_model_dir, bundled_tokenizer, solves):
    quantized, _, windows = _run(tiny_model_dir, bundled_tokenizer, true_sequential=True)
    sequential = list(solves)
    for at, linear, before in [(O_PROJ_0, "self_attn.o_proj", QKV_0),
                               (GATE_0, "mlp.gate_proj", QKV_0 + ["model.layers.0.self_attn.o_proj"]),
                               (DOWN_0, "mlp.down_proj", QKV_0 + ["model.layers.0.self_attn.o_proj"] + GATE_UP_0)]:
        model = _with_weights(tiny_model_dir, quantized, before)
        expected = _hessian(_inputs(model, windows, f"model.layers.0.{linear}"))
        torch.testing.assert_close(sequential[at][1], expected, rtol=1e-4, atol=1e-5)
    solves.clear()
    _run(tiny_model_dir, bundled_tokenizer)  # the default: every group on the float block's inputs
    float_model = _with_weights(tiny_model_dir, quantized, [])
    float_hessian = _hessian(_inputs(float_model, windows, "model.layers.0.self_attn.o_proj"))
    torch.testing.assert_close(solves[O_PROJ_0][1], float_hessian, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(sequential[O_PROJ_0][1], float_hessian, rtol=1e-2, atol=1e-3)


def test_with_the_upstream_correction_the_float_side_is_the_float_model(tiny_model_dir, bundled_tokenizer, solves):
    """Block 0's o_proj is moved towards the float model's o_proj output (its q/k/v quantized in the pass
    before), block 1's q/k/v towards the float model's block 1 (the float states moved on once per block)."""
    quantized, _, windows = _run(tiny_model_dir, bundled_tokenizer, true_sequential=True, correct_upstream=1.0)
    float_model = _with_weights(tiny_model_dir, quantized, [])
    for at, linear, quantized_before in [(O_PROJ_0, "model.layers.0.self_attn.o_proj", _with_weights(
            tiny_model_dir, quantized, QKV_0)), (Q_PROJ_1, "model.layers.1.self_attn.q_proj", quantized)]:
        x_q, x_f = _inputs(quantized_before, windows, linear), _inputs(float_model, windows, linear)
        upstream = Upstream(torch.empty(0), 1.0, GPTQOptions.damp)
        upstream.crosses["x"] = CrossAccumulator(x_q.shape[-1], "cpu")
        upstream.crosses["x"].add(x_q, x_f)
        expected = upstream.correction("x", _hessian(x_q))(models.get_module(float_model, linear).weight.data)
        target, H = solves[at]
        torch.testing.assert_close(H, _hessian(x_q), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(target, expected, rtol=1e-3, atol=1e-4)
        assert not torch.allclose(target, models.get_module(float_model, linear).weight.data, atol=1e-3)


def test_true_sequential_is_recorded_in_the_checkpoint_meta(tiny_model_dir, tmp_path):
    meta = quantize_tiny(tiny_model_dir, tmp_path / "c", api.QuantConfig(
        method="gptq", bits=2, group_size=32, samples=6, seq_len=64, batch_size=4, true_sequential=True))
    assert meta["calibration"]["true_sequential"] is True


@pytest.mark.parametrize("config, message", [
    (dict(method="rtn", true_sequential=True), "uses no calibration"),
    (dict(method="flexround", true_sequential=True), "trains each block"),
    (dict(method="gptq", true_sequential=True, propagate="float"), "propagate"),
])
def test_true_sequential_where_it_cannot_apply_is_refused(tiny_model_dir, tmp_path, config, message):
    assert_refused(tiny_model_dir, tmp_path, message, **config)


def test_true_sequential_runs_under_awq_and_the_upstream_correction(tiny_model_dir, tmp_path):
    """awq's search takes the float block's statistics in the first pass; the later passes see its scaled inputs."""
    meta = quantize_tiny(tiny_model_dir, tmp_path / "c", api.QuantConfig(
        method="gptq", bits=2, group_size=32, samples=6, seq_len=64, batch_size=4, true_sequential=True,
        correct_upstream=0.25, transforms=("awq",)))
    assert meta["calibration"]["true_sequential"] is True and meta["calibration"]["correct_upstream"] == 0.25
    assert any(record.get("name") == "awq" for record in meta["transforms"])

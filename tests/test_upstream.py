"""--correct-upstream (GPTAQ's asymmetric calibration): the moved target is the least-squares fit of the float
model's outputs, block 0 (no upstream error) is untouched, and later blocks end nearer the float model."""
import pytest
import torch

from edgeq import api
from edgeq.calib import pipeline
from edgeq.calib.capture import HessianAccumulator
from edgeq.calib.upstream import CrossAccumulator, Upstream
from edgeq.io import models
from edgeq.quant import grid
from tests.conftest import quantize_in_memory
from tests.test_pipeline import assert_refused, quantize_tiny


def _pairs(seed=0, b=4, length=16, k=24, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    x_q = torch.randn(b, length, k, generator=g)
    x_f = x_q + noise * torch.randn(b, length, k, generator=g)
    return x_q, x_f


def _target(x_q, x_f, W, strength, first_token_weight=1.0):
    acc = HessianAccumulator(x_q.shape[-1], "cpu", first_token_weight)
    acc.add(x_q)
    upstream = Upstream(torch.empty(0), strength, damp=1e-10, first_token_weight=first_token_weight)
    upstream.crosses["x"] = CrossAccumulator(x_q.shape[-1], "cpu", first_token_weight)
    upstream.crosses["x"].add(x_q, x_f)
    return upstream.correction("x", acc.hessian())(W)


def test_the_full_correction_is_the_least_squares_fit_of_the_float_outputs_on_the_quantized_inputs():
    x_q, x_f = _pairs()
    W = torch.randn(10, 24, generator=torch.Generator().manual_seed(1))
    X_q, X_f = x_q.reshape(-1, 24).double(), x_f.reshape(-1, 24).double()
    best = torch.linalg.lstsq(X_q, X_f @ W.double().T).solution.T  # argmin ||X_f W^T - X_q V^T||
    torch.testing.assert_close(_target(x_q, x_f, W, 1.0).double(), best, rtol=1e-5, atol=1e-5)
    # a strength moves the target that share of the way
    torch.testing.assert_close(_target(x_q, x_f, W, 0.25).double(), W.double() + 0.25 * (best - W.double()),
                               rtol=1e-5, atol=1e-5)
    # no upstream error, no correction
    assert torch.equal(_target(x_q, x_q.clone(), W, 1.0), W)


def test_the_cross_term_weights_the_first_position_as_the_hessian_does():
    x_q, x_f = _pairs(b=3, length=5, k=4)
    acc = CrossAccumulator(4, "cpu", first_token_weight=3.0)
    acc.add(x_q, x_f)
    rep = lambda x: torch.cat([x[:, :1], x[:, :1], x], dim=1).reshape(-1, 4)  # the first rows twice more
    torch.testing.assert_close(acc.sum, (rep(x_f) - rep(x_q)).T @ rep(x_q))
    assert acc.count == 15


def _quantize(model_dir, tokenizer, strength):
    recipe = pipeline.Recipe.of("gptq", grid.QuantSpec(2, 32), {}, batch_size=4, correct_upstream=strength)
    return quantize_in_memory(model_dir, tokenizer, recipe)


def test_block_0_is_untouched_and_the_model_ends_nearer_the_float_one(tiny_model_dir, bundled_tokenizer):
    plain, plain_q, windows = _quantize(tiny_model_dir, bundled_tokenizer, 0.0)
    corrected, corrected_q, _ = _quantize(tiny_model_dir, bundled_tokenizer, 1.0)
    float_model, _ = models.load_model(models.resolve_source(str(tiny_model_dir)))
    for name, qw in plain_q.items():  # block 0's inputs are the float model's own: nothing to correct
        same = torch.equal(qw.dequantize(), corrected_q[name].dequantize())
        assert same if ".layers.0." in name else True, name
    assert any(not torch.equal(qw.q, corrected_q[n].q) for n, qw in plain_q.items() if ".layers.2." in n)

    def last_states(model):
        with torch.no_grad():
            return model(input_ids=windows, output_hidden_states=True).hidden_states[-1]
    reference = last_states(float_model)
    error = lambda model: float(((last_states(model) - reference) ** 2).mean())
    assert error(corrected) < error(plain)


@pytest.mark.parametrize("config, message", [
    (dict(method="rtn", correct_upstream=0.5), "uses no calibration"),
    (dict(method="flexround", correct_upstream=0.5), "already trains"),
    (dict(method="gptq", correct_upstream=0.5, propagate="float"), "propagate float"),
    (dict(method="gptq", correct_upstream=1.5), "between 0 and 1"),
])
def test_a_correction_that_cannot_apply_is_refused(tiny_model_dir, tmp_path, config, message):
    assert_refused(tiny_model_dir, tmp_path, message, **config)


def test_the_strength_is_recorded(tiny_model_dir, tmp_path):
    meta = quantize_tiny(tiny_model_dir, tmp_path / "c", api.QuantConfig(
        method="gptq", bits=4, group_size=32, samples=4, seq_len=32, correct_upstream=0.25))
    assert meta["calibration"]["correct_upstream"] == 0.25

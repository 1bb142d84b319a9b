"""--e2e-epochs (calib/e2e.py): every scale of the calibrated model trained together on KL(float || quantized);
the codes and zero points stay, the checkpoint ends nearer the float model on the windows it trained on, and
what cannot be trained that way is refused."""
import pytest
import torch

from edgeq import api
from edgeq.calib import data, e2e
from edgeq.io import checkpoint, models
from tests.conftest import calibration_text, calibration_windows
from tests.test_pipeline import assert_refused, quantize_tiny

BASE = dict(method="gptq", bits=2, group_size=32, samples=8, seq_len=64, batch_size=4)


def _divergence(folder, float_model, windows) -> float:
    model, _, _ = checkpoint.load_checkpoint(folder)
    with torch.no_grad():
        return float(e2e.output_divergence(model, float_model, {}, windows))


def test_trained_scales_bring_the_checkpoint_nearer_the_float_model_and_keep_the_codes(
        tiny_model_dir, bundled_tokenizer, tmp_path):
    plain = quantize_tiny(tiny_model_dir, tmp_path / "plain", api.QuantConfig(**BASE, lm_head=8))
    trained = quantize_tiny(tiny_model_dir, tmp_path / "e2e", api.QuantConfig(**BASE, lm_head=8, e2e_epochs=4,
                                                                                 e2e_lr=2e-2))
    assert trained["e2e"]["windows"] == 8 and len(trained["e2e"]["kl_per_epoch"]) == 4
    assert trained["stats"]["seconds_e2e"] > 0
    assert "e2e" not in plain
    float_model, _ = models.load_model(models.resolve_source(str(tiny_model_dir)))
    windows, _ = data.calibration_set(bundled_tokenizer, [str(calibration_text())], None, 8, 64)  # quantize's own
    before = _divergence(tmp_path / "plain", float_model, windows)
    after = _divergence(tmp_path / "e2e", float_model, windows)
    assert after < 0.9 * before, (before, after)
    _, q_plain, _ = checkpoint.load_checkpoint(tmp_path / "plain")
    _, q_trained, _ = checkpoint.load_checkpoint(tmp_path / "e2e")
    assert q_plain.keys() == q_trained.keys() and "lm_head" in q_trained  # the head's scales train too
    for name, qw in q_plain.items():
        assert torch.equal(qw.q, q_trained[name].q) and torch.equal(qw.zero, q_trained[name].zero), name
    assert sum(not torch.equal(qw.scale, q_trained[n].scale) for n, qw in q_plain.items()) == len(q_plain)


def test_the_divergence_is_zero_for_the_float_model_and_positive_for_another(tiny_model_dir, bundled_tokenizer):
    float_model, _ = models.load_model(models.resolve_source(str(tiny_model_dir)))
    windows = calibration_windows(bundled_tokenizer, 2, 16)
    with torch.no_grad():
        assert float(e2e.output_divergence(float_model, float_model, {}, windows)) == pytest.approx(0.0, abs=1e-6)
        name = "model.layers.0.mlp.down_proj.weight"
        other = {name: 2 * models.get_module(float_model, name[:-len(".weight")]).weight}
        assert float(e2e.output_divergence(float_model, float_model, other, windows)) > 1e-4


@pytest.mark.parametrize("config, message", [
    (dict(method="rtn", e2e_epochs=1), "uses none"),
    (dict(method="matquant", bits=8, e2e_epochs=1), "several"),
    (dict(method="gptq", e2e_epochs=-1), ">= 0"),
    (dict(method="gptq", e2e_epochs=1, e2e_lr=0.0), "e2e-lr"),
    (dict(method="gptq", e2e_epochs=1, e2e_samples=0), "e2e-samples"),
])
def test_training_that_cannot_apply_is_refused(tiny_model_dir, tmp_path, config, message):
    assert_refused(tiny_model_dir, tmp_path, message, **config)


def test_e2e_samples_takes_the_first_windows(tiny_model_dir, tmp_path):
    meta = quantize_tiny(tiny_model_dir, tmp_path / "c", api.QuantConfig(**BASE, e2e_epochs=1, e2e_samples=4))
    assert meta["e2e"]["windows"] == 4 and meta["calibration"]["samples"] == 8

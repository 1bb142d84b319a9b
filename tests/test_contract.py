"""The contract every registered method keeps, whatever it is: quantize -> export -> eval on the tiny model runs
through the same API and CLI paths as the bundled model's, the export computes what the checkpoint computes, and
two runs of the same command write the same checkpoint, byte for byte (tensors_sha256). A method added under
edgeq/solvers/ is checked here without a line of this file changing."""
from __future__ import annotations

import json

import pytest

from conftest import calibration_text, held_out_text
from edgeq import api
from edgeq.export.onnx import export
from edgeq.solvers import get_method, method_names

QUICK = {"steps": 3}  # learned methods: a few steps are enough to run every path


def config_for(name: str) -> api.QuantConfig:
    method = get_method(name)
    opts = {k: v for k, v in QUICK.items() if k in method.option_names}
    return api.QuantConfig(method=name, bits=8 if method.nested else 4, group_size=32, samples=4, seq_len=32,
                           solver_opts=opts)


def quantize(model_dir, out, name):
    calib = str(calibration_text()) if get_method(name).calibrated else None
    api.quantize(str(model_dir), out, config_for(name), calib=calib, progress=False)
    return json.loads((out / "quantization.json").read_text())


@pytest.mark.parametrize("name", method_names())
def test_every_method_quantizes_exports_and_evaluates_the_same_model(name, tiny_model_dir, tmp_path):
    first = quantize(tiny_model_dir, tmp_path / "a", name)
    again = quantize(tiny_model_dir, tmp_path / "b", name)
    assert first["tensors_sha256"] == again["tensors_sha256"], f"{name} is not deterministic"
    report = export(str(tmp_path / "a"), tmp_path / "onnx", accuracy_level=0)
    assert report["matmulnbits_nodes"] > 0
    text = str(held_out_text())
    torch_ppl = api.evaluate(str(tmp_path / "a"), text, 32, 2, progress=False)["perplexity"]
    ort_ppl = api.evaluate(str(tmp_path / "onnx"), text, 32, 2, progress=False)["perplexity"]
    assert ort_ppl == pytest.approx(torch_ppl, rel=1e-3)

"""The calibration forward in bf16 (calib/precision.py): when 'auto' picks it, what it rounds (the products'
inputs only: the Hessian sums and the states stay float32), and that a bf16 run is a real, different, still
accurate calibration whose resume folder is not a float32 run's."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgeq import api
from edgeq.calib import data, pipeline
from edgeq.calib.capture import HessianAccumulator
from edgeq.calib.precision import cpu_has_native_bf16, resolve_calib_dtype
from edgeq.config import QuantConfig
from edgeq.errors import EdgeqError
from edgeq.evaluation import heldout
from edgeq.io import models
from edgeq.quant import grid

from conftest import calibration_text

X86_BF16 = "processor : 0\nflags : fpu sse avx512f avx512bw avx512_bf16 avx512_vnni\n"
X86_AMX = "flags : fpu avx512f amx_bf16 amx_tile\n"
X86_PLAIN = "flags : fpu sse avx2 avx512f avx512bw\n"
ARM_BF16 = "processor : 0\nFeatures : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm\n"
ARM_PLAIN = "processor : 0\nFeatures : fp asimd evtstrm aes pmull sha1 sha2 crc32\n"


@pytest.mark.parametrize("cpuinfo, native", [(X86_BF16, True), (X86_AMX, True), (X86_PLAIN, False),
                                             (ARM_BF16, True), (ARM_PLAIN, False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert cpu_has_native_bf16(cpuinfo) is native


def test_auto_follows_the_cpu_and_stays_float32_where_blocks_are_trained():
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_calib_dtype("auto", "cpu") == expected
    assert resolve_calib_dtype("auto", "cpu", trains_blocks=True) == torch.float32
    assert resolve_calib_dtype("float32", "cpu") == torch.float32
    assert resolve_calib_dtype("bfloat16", "cpu", trains_blocks=True) == torch.bfloat16
    with pytest.raises(EdgeqError, match="--calib-dtype must be one of"):
        resolve_calib_dtype("fp8", "cpu")
    with pytest.raises(EdgeqError, match="--calib-dtype must be one of"):
        QuantConfig(calib_dtype="half").validate()
    assert pipeline.Recipe(QuantConfig(method="signround", calib_dtype="auto")).calib_dtype == torch.float32
    assert resolve_calib_dtype("auto", "cpu", min_bits=2) == torch.float32  # measured: W2 loses under bf16
    assert pipeline.Recipe(QuantConfig(bits=2, group_size=64)).calib_dtype == torch.float32
    assert pipeline.Recipe(QuantConfig(layer_grids=(("down_proj", 3, 128),))).calib_dtype == torch.float32
    assert pipeline.Recipe(QuantConfig(bits=2, group_size=64, calib_dtype="bfloat16")).calib_dtype == torch.bfloat16


def test_bf16_hessian_keeps_a_float32_sum_close_to_the_float32_one():
    torch.manual_seed(0)
    batches = [torch.randn(2, 64, 48) * torch.linspace(0.1, 10, 48) for _ in range(40)]
    sums = {}
    for dtype in (torch.float32, torch.bfloat16):
        acc = HessianAccumulator(48, "cpu", first_token_weight=3.0, dtype=dtype)
        for x in batches:
            acc.add(x)
        sums[dtype] = acc.hessian()
        assert sums[dtype].dtype == torch.float32
    exact = sums[torch.float32]
    error = (sums[torch.bfloat16] - exact).norm() / exact.norm()
    assert 0 < error < 4e-3  # rounded (so it did run in bf16), by about bf16's 2^-9 over sqrt(batches)


def _tiny_windows(tokenizer):
    text, _ = heldout.read_text(str(calibration_text()))
    return data.calibration_windows(data.tokenize(tokenizer, text[:100_000]), 6, 64)


def test_a_bf16_calibration_differs_from_float32_but_solves_as_well(tiny_model_dir, bundled_tokenizer):
    source = models.resolve_source(str(tiny_model_dir))
    windows = _tiny_windows(bundled_tokenizer)
    results, digests = {}, {}
    for name in ("float32", "bfloat16"):
        model, config = models.load_model(source)
        recipe = pipeline.Recipe.of("gptq", grid.QuantSpec(4, 32), {}, batch_size=2, calib_dtype=name)
        digests[name] = recipe.digest("model", "calib")
        packed, timings = pipeline.quantize_model(model, models.arch_of(config), recipe, windows, progress=False)
        results[name] = (packed, timings.layer_errors)
    assert digests["float32"] != digests["bfloat16"]  # a resume folder of one is not the other's
    fp_packed, fp_errors = results["float32"]
    bf_packed, bf_errors = results["bfloat16"]
    assert any(not torch.equal(t, bf_packed.tensors[n]) for n, t in fp_packed.tensors.items())
    assert fp_errors.keys() == bf_errors.keys()
    total_fp, total_bf = sum(fp_errors.values()), sum(bf_errors.values())
    assert total_bf == pytest.approx(total_fp, rel=0.05)


def test_the_checkpoint_records_the_products_dtype_and_the_cli_refuses_another(tiny_model_dir, tmp_path):
    meta = api.quantize(str(tiny_model_dir), str(tmp_path / "q"), QuantConfig(samples=4, seq_len=32,
                                                                               calib_dtype="bfloat16"),
                        calib=str(calibration_text()), progress=False)
    assert meta["calibration"]["compute_dtype"] == "bfloat16"
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["calibration"]["compute_dtype"] == \
        "bfloat16"
    done = subprocess.run([sys.executable, "-m", "edgeq.cli", "quantize", str(tiny_model_dir), "--out",
                           str(tmp_path / "r"), "--calib-dtype", "fp16"], capture_output=True, text=True)
    assert done.returncode == 2 and "--calib-dtype" in done.stderr and not (tmp_path / "r").exists()

"""`edgeq export --format gptq`: an edgeq checkpoint as a GPTQ (v1) Hugging Face folder, checked against the
readers of the real tools: onnxruntime-genai's builder unpacks our words and turns the folder into a decoder
whose logits equal edgeq's own ONNX export of the same checkpoint; transformers loads it where a GPTQ backend
is installed (none installs on this CPU machine without building GPTQModel: skipped there)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeq import api
from edgeq.errors import EdgeqError
from edgeq.export import gptq
from edgeq.quant import gptq_format as fmt
from edgeq.export.onnx import export
from edgeq.quant.qweight import QuantizedWeight
from edgeq.runtime.session import OrtDecoder

from conftest import calibration_text, cli_in_process, edgeq_cli

PROMPT, FORCED = [1, 5, 9, 42, 7], [3, 8, 11]


def _builder_base():
    loaders = pytest.importorskip("onnxruntime_genai.models.loaders.base", reason="genai's builder")
    return loaders.QuantizedModel


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_our_words_unpack_as_the_builder_unpacks_them(bits):
    codes = torch.randint(0, 2 ** bits, (64, 24), generator=torch.Generator().manual_seed(bits))
    words = fmt.pack_rows(codes.numpy(), bits)
    assert words.dtype == np.int32 and words.shape == (64 * bits // 32, 24)
    theirs = _builder_base().unpack_on_row_for_2_4_8_bits(None, torch.from_numpy(words), bits, transpose=True)
    assert torch.equal(theirs.to(torch.int64), codes)
    assert np.array_equal(fmt.unpack_rows(words, bits), codes.numpy())


def _weight(n=32, k=160, bits=4, group=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = -(-k // group)
    return QuantizedWeight(torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.uint8),
                           torch.rand(n, groups, generator=g) + 0.01,
                           torch.randint(0, 2 ** bits, (n, groups), generator=g, dtype=torch.uint8), bits, group)


@pytest.mark.parametrize("bits, group", [(4, 128), (3, 32), (2, 64), (8, 160)])
def test_a_group_that_does_not_tile_k_is_written_exactly_as_smaller_groups(bits, group):
    qw = _weight(bits=bits, group=group)
    tensors = fmt.gptq_tensors("m", qw)
    written = fmt.written_group(qw)
    assert written == (160 if group >= 160 else np.gcd(group, 160))  # g128 on K = 160: groups of 32
    assert tensors["m.scales"].shape == (160 // written, 32) and tensors["m.scales"].dtype == torch.float16
    back = fmt.dequantize_gptq(tensors, "m", fmt.CONTAINER_BITS[bits])
    exact = qw.dequantize()
    assert (back - exact).abs().max() <= 1e-3 * exact.abs().max()  # float16 scales only
    container = fmt.CONTAINER_BITS[bits]
    repeat = 1 if group >= 160 else group // written
    zero = qw.zero.to(torch.int64).repeat_interleave(repeat, dim=1)[:, :160 // written].T.numpy()
    stored = fmt.unpack_rows(tensors["m.qzeros"].numpy().T, container).T
    assert np.array_equal(stored, (zero - 1) % 2 ** container)  # v1 stores zero - 1


def test_widths_without_a_gptq_packing_are_refused():
    six = QuantizedWeight(torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 1), torch.zeros(4, 1, dtype=torch.uint8),
                          6, 32)
    with pytest.raises(EdgeqError, match="6-bit codes have no GPTQ packing"):
        fmt.gptq_tensors("m", six)


@pytest.fixture(scope="module")
def mixed_checkpoint(tiny_model_dir, tmp_path_factory):
    """GPTQ W4 g128 of the tiny Llama (K = 64 is per-channel, down_proj's K = 160 a partial group), its
    down_proj at 8 bits g32 and an 8-bit head: a main grid, a `dynamic` layer and a quantized head."""
    out = tmp_path_factory.mktemp("gptq") / "ckpt"
    api.quantize(str(tiny_model_dir), out, api.QuantConfig(bits=4, group_size=128, samples=4, seq_len=64,
                                                           layer_grids=(("down_proj", 8, 32),), lm_head=8),
                 calib=str(calibration_text()), progress=False)
    return out


@pytest.fixture(scope="module")
def gptq_folder(mixed_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gptq") / "folder"
    edgeq_cli("export", mixed_checkpoint, "--format", "gptq", "--out", out)
    return out


def test_the_folder_says_what_the_readers_need(gptq_folder):
    config = json.loads((gptq_folder / "config.json").read_text())
    q = config["quantization_config"]
    assert (q["quant_method"], q["checkpoint_format"], q["bits"], q["desc_act"]) == ("gptq", "gptq", 4, False)
    assert q["lm_head"] is True and config["tie_word_embeddings"] is False
    dynamic = q["dynamic"]
    assert any("down_proj" in key for key in dynamic) and all(key.startswith("+:") for key in dynamic)
    assert {"bits": 8, "group_size": 32} in dynamic.values()
    assert (gptq_folder / "tokenizer.json").is_file()


def test_genais_builder_reads_the_folder_as_edgeq_exports_the_checkpoint(gptq_folder, mixed_checkpoint, tmp_path):
    pytest.importorskip("onnx_ir", reason="genai's builder needs onnx-ir")
    built = tmp_path / "built"
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(gptq_folder),
                           "-o", str(built), "-p", "int4", "-e", "cpu", "--extra_options", "accuracy_level=0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = tmp_path / "ours"
    export(str(mixed_checkpoint), ours, accuracy_level=0)
    theirs = OrtDecoder.from_folder(built).forced_logits(PROMPT, FORCED)
    mine = OrtDecoder.from_folder(ours).forced_logits(PROMPT, FORCED)
    error = np.linalg.norm(theirs - mine) / np.linalg.norm(mine)
    # measured 4.3e-4: float16 scales and tables (a zero point off by one gives ~19; at the builder's default
    # accuracy level 4, int8 activations, ~1e-2)
    assert error < 2e-3, error


def test_transformers_loads_the_folder_where_a_gptq_backend_is_installed(gptq_folder, mixed_checkpoint):
    pytest.importorskip("gptqmodel", reason="transformers' GPTQ loading needs GPTQModel, not installed here")
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(gptq_folder, device_map="cpu")
    reference, _, _ = api_load(mixed_checkpoint)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        got, want = model(ids).logits.float(), reference(ids).logits
    assert ((got - want).norm() / want.norm()) < 1e-2


def api_load(path):
    from edgeq.io.checkpoint import load_checkpoint
    return load_checkpoint(path)


def test_onnx_only_flags_and_a_float_model_are_refused_with_nothing_written(tiny_model_dir, mixed_checkpoint,
                                                                            tmp_path):
    for args in (["--accuracy-level", "0"], ["--ort-format"]):
        done = cli_in_process("export", mixed_checkpoint, "--format", "gptq", "--out", tmp_path / "x", *args)
        assert done.returncode == 2 and "applies to --format onnx" in done.stderr
    done = cli_in_process("export", tiny_model_dir, "--format", "gptq", "--out", tmp_path / "x")
    assert done.returncode == 2 and "not an edgeq checkpoint" in done.stderr
    assert not (tmp_path / "x").exists()

"""GPTQ folders written by other tools, read where an edgeq checkpoint is (io/gptq_folder.py): checked against a
real producer, auto-round 0.16.1, whose own fake-quantized weights (round to nearest, iters 0) ours must equal;
then `edgeq export` and `edgeq eval` of such a folder, and the refusals of what is not read."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from edgeq.io.gptq_folder import load_gptq_folder
from edgeq.quant import gptq_format as fmt

from conftest import calibration_text, edgeq_cli, held_out_text


def _auto_round(model_dir, out, bits, group, sym):
    """auto-round's round-to-nearest (iters 0) on the CPU, saved in its auto_gptq format; returns the folder
    and auto-round's own in-memory model (its fake-quantized weights: the reference)."""
    auto_round = pytest.importorskip("auto_round", reason="auto-round is a test extra")
    text = calibration_text().read_text()
    texts = [text[i * 4000:(i + 1) * 4000] for i in range(4)]
    ar = auto_round.AutoRound(str(model_dir), scheme="W4A16", bits=bits, group_size=group, sym=sym, iters=0,
                              device_map="cpu", nsamples=2, seqlen=32, dataset=texts)
    model, _ = ar.quantize()
    reference = {name: m.weight.detach().float().clone() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "layers" in name}
    ar.save_quantized(str(out), format="auto_gptq")
    folder = next(p.parent for p in out.rglob("config.json"))
    return folder, reference


@pytest.mark.parametrize("bits, group, sym", [(4, 32, False), (4, 32, True), (8, 64, True), (2, 32, False)])  # auto-round refuses W8 asym in this format
def test_auto_rounds_gptq_folder_reads_as_its_own_fake_quantized_weights(tiny_model_dir, tmp_path, bits, group,
                                                                         sym):
    folder, reference = _auto_round(tiny_model_dir, tmp_path / "ar", bits, group, sym)
    model, qweights, meta = load_gptq_folder(folder)
    assert set(qweights) == set(reference) and meta["imported_from"]["format"] == "gptq"
    for name, weight in reference.items():
        ours = qweights[name].dequantize()
        assert qweights[name].bits == bits and qweights[name].group_size == group
        # auto-round keeps its fake-quantized weights in bf16 on this CPU: ours rounded to bf16 are equal;
        # a zero point off by one is a whole step (a scale) away
        torch.testing.assert_close(ours, weight, rtol=2 ** -8, atol=1e-6)
        assert torch.equal(dict(model.named_modules())[name].weight, ours)


def test_an_imported_folder_exports_and_evaluates(tiny_model_dir, tmp_path):
    folder, _ = _auto_round(tiny_model_dir, tmp_path / "ar", 4, 32, False)
    out = edgeq_cli("export", folder, "--out", tmp_path / "onnx", "--lm-head", "8")
    assert "MatMulNBits" in out and (tmp_path / "onnx" / "genai_config.json").is_file()
    edgeq_cli("eval", folder, "--text", held_out_text(), "--max-windows", 2, "--seq-len", 64,
              "--json", tmp_path / "eval.json", "--quiet")
    assert json.loads((tmp_path / "eval.json").read_text())["perplexity"] > 1


@pytest.fixture(scope="module")
def our_folder(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gptq-import") / "w4"
    edgeq_cli("export", tiny_checkpoint, "--format", "gptq", "--out", out)
    return out


def _edited(folder, tmp_path, edit_config=None, edit_tensors=None):
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    if edit_config:
        config = json.loads((copy / "config.json").read_text())
        edit_config(config["quantization_config"])
        (copy / "config.json").write_text(json.dumps(config))
    if edit_tensors:
        from safetensors.torch import load_file, save_file
        tensors = load_file(str(copy / "model.safetensors"))
        edit_tensors(tensors)
        save_file(tensors, str(copy / "model.safetensors"))
    return copy


def test_v2_zero_points_read_as_the_same_weights(our_folder, tmp_path):
    def to_v2(tensors):
        for key in [k for k in tensors if k.endswith(".qzeros")]:
            zero = fmt.unpack_rows(tensors[key].numpy().T, 4)
            tensors[key] = torch.from_numpy(fmt.pack_rows((zero.astype("int64") + 1) & 15, 4).T.copy())
    v2 = _edited(our_folder, tmp_path, lambda q: q.update(checkpoint_format="gptq_v2"), to_v2)
    _, v1_weights, _ = load_gptq_folder(our_folder)
    _, v2_weights, _ = load_gptq_folder(v2)
    for name, qw in v1_weights.items():
        assert torch.equal(qw.zero, v2_weights[name].zero) and torch.equal(qw.q, v2_weights[name].q)


def _refused(folder, match):
    done = subprocess.run([sys.executable, "-m", "edgeq.cli", "export", str(folder), "--out",
                           str(folder.parent / "never")], capture_output=True, text=True)
    assert done.returncode == 2 and match in done.stderr, done.stderr[-500:]
    assert not (folder.parent / "never").exists()


def test_what_is_not_read_is_refused_in_one_line(our_folder, tmp_path):
    _refused(_edited(our_folder, tmp_path, lambda q: q.update(checkpoint_format="marlin")),
             "checkpoint_format 'marlin' is not read")
    shutil.rmtree(tmp_path / "edited")

    def act_order(tensors):
        key = next(k for k in tensors if k.endswith(".g_idx"))
        tensors[key] = tensors[key].flip(0).contiguous()
    _refused(_edited(our_folder, tmp_path, edit_tensors=act_order), "act-order")
    shutil.rmtree(tmp_path / "edited")

    def no_scales(tensors):
        del tensors[next(k for k in tensors if k.endswith(".scales"))]
    _refused(_edited(our_folder, tmp_path, edit_tensors=no_scales), "has no")
    shutil.rmtree(tmp_path / "edited")
    _refused(_edited(our_folder, tmp_path, lambda q: q.update(bits=3)), "3-bit GPTQ packing is not read")

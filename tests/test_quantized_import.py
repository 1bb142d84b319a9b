"""Folders quantized by other tools, read where an edgeq checkpoint is (io/quantized_folder.py): each format
checked against a real producer, auto-round 0.16.1 (its auto_gptq, auto_awq and own auto_round formats, and its
llm_compressor output, which the compressed-tensors library packs as llm-compressor's saves do), whose own
fake-quantized weights (round to nearest, iters 0) ours must equal; transformers' own load of a folder where it
loads here, and onnxruntime-genai's builder where it reads the format; then `edgeq export` and `edgeq eval` of
such a folder, and the refusals of what is not read. Act-order (desc_act) folders are checked here on a g_idx
dealt as GPTQ's act-order deals it, against GPTQ's own de-quantization formula; GPTQModel itself (a torch it
needs that CI does not install) writes them in benchmarks/gptqmodel_interop.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeq.io.quantized_folder import load_quantized_folder
from edgeq.quant import gptq_format as fmt
from edgeq.runtime.session import OrtDecoder

from conftest import calibration_text, cli_in_process, edgeq_cli, held_out_text

PROMPT, FORCED = [1, 5, 9, 42, 7], [3, 8, 11]


def _auto_round(model_dir, out, bits, group, sym, fmt_name="auto_gptq"):
    """auto-round's round-to-nearest (iters 0) on the CPU, saved in `fmt_name`; returns the folder and
    auto-round's own in-memory model's weights (its fake-quantized weights: the reference)."""
    auto_round = pytest.importorskip("auto_round", reason="auto-round is a test extra")
    if fmt_name == "llm_compressor":
        pytest.importorskip("compressed_tensors", reason="compressed-tensors is a test extra")
    text = calibration_text().read_text()
    texts = [text[i * 4000:(i + 1) * 4000] for i in range(4)]
    ar = auto_round.AutoRound(str(model_dir), scheme="W4A16", bits=bits, group_size=group, sym=sym, iters=0,
                              device_map="cpu", nsamples=2, seqlen=32, dataset=texts)
    model, _ = ar.quantize()
    reference = {name: m.weight.detach().float().clone() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "layers" in name}
    ar.save_quantized(str(out), format=fmt_name)
    folder = next(p.parent for p in out.rglob("config.json"))
    return folder, reference


@pytest.fixture(scope="module")
def produced(tiny_model_dir, tmp_path_factory):
    """produced(fmt_name, bits, group, sym) -> auto-round's folder and reference, made once for the module:
    several tests read the same folder (none writes into it), and each auto-round run costs seconds."""
    made = {}

    def make(fmt_name, bits, group, sym):
        key = (fmt_name, bits, group, sym)
        if key not in made:
            made[key] = _auto_round(tiny_model_dir, tmp_path_factory.mktemp("ar"), bits, group, sym, fmt_name)
        return made[key]
    return make


# what auto-round 0.16.1 writes on this CPU: it refuses W8 asym as auto_gptq and every width but 4-7 as
# auto_awq, and packs only groups that divide K (160 here); its own format fails to pack asymmetric weights (a TypeError in its WQLinear_GEMM call)
PRODUCED = [("auto_gptq", "gptq", 4, 32, False), ("auto_gptq", "gptq", 4, 32, True),
            ("auto_gptq", "gptq", 8, 64, True), ("auto_gptq", "gptq", 2, 32, False),
            ("auto_awq", "awq", 4, 32, False), ("auto_awq", "awq", 4, 16, True),
            ("auto_round", "auto-round", 4, 32, True), ("auto_round", "auto-round", 2, 32, True),
            ("llm_compressor", "compressed-tensors", 4, 32, False), ("llm_compressor", "compressed-tensors", 4, 32, True),
            ("llm_compressor", "compressed-tensors", 8, -1, True), ("llm_compressor", "compressed-tensors", 3, 32, False)]


@pytest.mark.parametrize("fmt_name, method, bits, group, sym", PRODUCED)
def test_a_producers_folder_reads_as_its_own_fake_quantized_weights(produced, fmt_name, method, bits, group, sym):
    folder, reference = produced(fmt_name, bits, group, sym)
    model, qweights, meta = load_quantized_folder(folder)
    assert set(qweights) == set(reference) and meta["imported_from"]["format"] == method
    for name, weight in reference.items():
        ours = qweights[name].dequantize()
        assert qweights[name].bits == bits and qweights[name].group_size == (group if group > 0 else weight.shape[1])
        # auto-round keeps its fake-quantized weights in bf16 on this CPU: ours rounded to bf16 are equal;
        # a zero point off by one is a whole step (a scale) away
        torch.testing.assert_close(ours, weight, rtol=2 ** -8, atol=1e-6)
        assert torch.equal(dict(model.named_modules())[name].weight, ours)

def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("fmt_name, bits, group", [("auto_round", 4, 32), ("llm_compressor", 4, 32)])
def test_transformers_own_load_of_the_folder_gives_our_logits(produced, fmt_name, bits, group):
    """transformers loads these two here (auto-round's QuantLinear; compressed-tensors decompressing to float):
    the producers' own model, not our reading. Symmetric only: transformers 5.25 cannot load compressed-tensors
    0.20's packed asymmetric zero points (a shape mismatch), nor AWQ or GPTQ without GPTQModel."""
    from transformers import AutoModelForCausalLM
    folder, _ = produced(fmt_name, bits, group, True)
    theirs = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.float32)
    ours, _, _ = load_quantized_folder(folder)
    ids = PROMPT + FORCED
    want, got = _logits(theirs, ids), _logits(ours, ids)
    # auto-round's QuantLinear multiplies in bf16 on this CPU; a zero point off by one moves logits by ~10%
    assert float((got - want).norm() / want.norm()) < 1e-2


def test_genais_builder_reads_an_awq_folder_as_edgeq_exports_it(produced, tmp_path):
    """A reader independent of ours for AWQ: onnxruntime-genai's builder repacks AWQ into MatMulNBits itself."""
    pytest.importorskip("onnx_ir", reason="genai's builder needs onnx-ir")
    folder, _ = produced("auto_awq", 4, 32, False)
    built = tmp_path / "built"
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o",
                           str(built), "-p", "int4", "-e", "cpu", "--extra_options", "accuracy_level=0",
                           # the builder RTN-quantizes a float head and embedding itself (to int4): 11% apart
                           "nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    edgeq_cli("export", folder, "--out", tmp_path / "ours", "--accuracy-level", 0)
    theirs = OrtDecoder.from_folder(built).forced_logits(PROMPT, FORCED)
    mine = OrtDecoder.from_folder(tmp_path / "ours").forced_logits(PROMPT, FORCED)
    assert np.linalg.norm(theirs - mine) / np.linalg.norm(mine) < 2e-3  # measured 2.9e-4


@pytest.mark.parametrize("fmt_name, bits, sym", [("auto_gptq", 4, False), ("auto_awq", 4, False),
                                                 ("llm_compressor", 4, False), ("auto_round", 4, True)])
def test_an_imported_folder_exports_and_evaluates(produced, tmp_path, fmt_name, bits, sym):
    folder, _ = produced(fmt_name, bits, 32, sym)
    out = edgeq_cli("export", folder, "--out", tmp_path / "onnx", "--accuracy-level", 0)
    assert "MatMulNBits" in out and (tmp_path / "onnx" / "genai_config.json").is_file()
    ours, first, _ = load_quantized_folder(folder)
    mine = OrtDecoder.from_folder(tmp_path / "onnx").forced_logits(PROMPT, FORCED)
    want = _logits(ours, PROMPT + FORCED)[len(PROMPT) - 1:].numpy()
    assert np.linalg.norm(mine - want) / np.linalg.norm(want) < 2e-3  # level-0 parity with the dequantized model
    edgeq_cli("eval", folder, "--text", held_out_text(), "--max-windows", 2, "--seq-len", 64,
              "--json", tmp_path / "eval.json", "--quiet")
    assert json.loads((tmp_path / "eval.json").read_text())["perplexity"] > 1
    edgeq_cli("export", folder, "--format", "gptq", "--out", tmp_path / "gptq", "--lm-head", "8")  # on as GPTQ
    _, again, _ = load_quantized_folder(tmp_path / "gptq")
    assert "lm_head" in again
    for name, qw in first.items():
        assert torch.equal(again[name].q, qw.q) and torch.equal(again[name].zero, qw.zero)


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
    _, v1_weights, _ = load_quantized_folder(our_folder)
    _, v2_weights, _ = load_quantized_folder(v2)
    for name, qw in v1_weights.items():
        assert torch.equal(qw.zero, v2_weights[name].zero) and torch.equal(qw.q, v2_weights[name].q)


def _act_order(tensors):
    """Every linear's inputs dealt to the groups in a random order, as GPTQ's desc_act writes g_idx (input i in
    group rank(i) // group size), the codes left in input order: a different model, defined by the format."""
    generator = torch.Generator().manual_seed(0)
    for key in [k for k in tensors if k.endswith(".g_idx")]:
        natural = tensors[key]
        tensors[key] = natural[torch.argsort(torch.randperm(natural.numel(), generator=generator))].contiguous()


def test_an_act_order_folder_reads_and_exports_with_its_columns_gathered(our_folder, tmp_path):
    folder = _edited(our_folder, tmp_path, lambda q: q.update(desc_act=True), _act_order)
    model, qweights, _ = load_quantized_folder(folder)
    from edgeq.io.quantized_folder import read_tensors
    tensors = read_tensors(folder)
    modules = dict(model.named_modules())
    for name, qw in qweights.items():
        assert qw.input_order is not None  # GPTQ's own de-quantization, scale[g_idx] * (q - zero[g_idx]):
        assert torch.equal(modules[name].weight, fmt.dequantize_gptq(tensors, name, 4))
    out = edgeq_cli("export", folder, "--out", tmp_path / "onnx", "--accuracy-level", 0)
    assert "MatMulNBits" in out
    import onnx
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.output[0].endswith("_gathered_input")]
    assert len(gathers) >= len(qweights) // 3  # q/k/v and gate/up may share one (one order each, fused)
    mine = OrtDecoder.from_folder(tmp_path / "onnx").forced_logits(PROMPT, FORCED)
    want = _logits(model, PROMPT + FORCED)[len(PROMPT) - 1:].numpy()
    assert np.linalg.norm(mine - want) / np.linalg.norm(want) < 2e-3
    edgeq_cli("export", folder, "--format", "gptq", "--out", tmp_path / "again")  # on as act-order GPTQ
    from safetensors.torch import load_file
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]["desc_act"]
    for name in qweights:
        for part in ("g_idx", "qweight", "qzeros"):
            assert torch.equal(again[f"{name}.{part}"].to(torch.int32), tensors[f"{name}.{part}"].to(torch.int32))
    done = cli_in_process("export", folder, "--format", "gguf", "--out", tmp_path / "never.gguf")
    assert done.returncode == 2 and "act-order" in done.stderr and not (tmp_path / "never.gguf").exists()


def _refused(folder, match):
    done = cli_in_process("export", folder, "--out", folder.parent / "never")
    assert done.returncode == 2 and match in done.stderr, done.stderr[-500:]
    assert not (folder.parent / "never").exists()


def test_what_is_not_read_is_refused_in_one_line(our_folder, tmp_path):
    _refused(_edited(our_folder, tmp_path, lambda q: q.update(checkpoint_format="marlin")),
             "checkpoint_format 'marlin' is not read")
    shutil.rmtree(tmp_path / "edited")

    def unequal_groups(tensors):
        key = next(k for k in tensors if k.endswith(".g_idx"))
        tensors[key] = torch.zeros_like(tensors[key])
    _refused(_edited(our_folder, tmp_path, edit_tensors=unequal_groups), "only act-order's equal groups are read")
    shutil.rmtree(tmp_path / "edited")

    def no_scales(tensors):
        del tensors[next(k for k in tensors if k.endswith(".scales"))]
    _refused(_edited(our_folder, tmp_path, edit_tensors=no_scales), "has no")
    shutil.rmtree(tmp_path / "edited")
    _refused(_edited(our_folder, tmp_path, lambda q: q.update(bits=3)), "3-bit GPTQ packing is not read")


@pytest.fixture(scope="module")
def compressed_folder(produced):
    folder, _ = produced("llm_compressor", 4, 32, False)
    return folder


def test_other_methods_and_variants_are_refused_in_one_line(our_folder, compressed_folder, tmp_path):
    cases = [(our_folder, lambda q: q.update(quant_method="bitsandbytes"), None,
              "quant_method 'bitsandbytes' is not read (gptq, awq, compressed-tensors, auto-round are)"),
             (our_folder, lambda q: q.update(quant_method="awq", version="gemv"), None, "AWQ version 'gemv' is not read"),
             (our_folder, lambda q: q.update(quant_method="auto-round", packing_format="auto_round:marlin"), None,
              "packing_format 'auto_round:marlin' is not read"),
             (compressed_folder, lambda q: q["config_groups"]["group_0"].update(format="naive-quantized"), None,
              "format 'naive-quantized' is not read"),
             (compressed_folder, lambda q: q["config_groups"]["group_0"].update(
                 input_activations={"num_bits": 8, "type": "int"}), None, "quantizes activations too"),
             (compressed_folder, None, lambda t: t.pop(next(k for k in t if k.endswith(".weight_scale"))),
              "has no weight_shape or weight_scale"),
             (compressed_folder, None, lambda t: t.update({k: v[:, :1].contiguous() for k, v in t.items()
                                                            if k.endswith("q_proj.weight_scale")}),
              "weight_scale of shape")]
    for folder, edit_config, edit_tensors, match in cases:
        _refused(_edited(folder, tmp_path, edit_config, edit_tensors), match)
        shutil.rmtree(tmp_path / "edited")

"""Exports run in onnxruntime-genai, the runtime apps embed: for each family, the logits genai computes at
every step (prompt, then one token at a time on its own KV cache) equal our onnxruntime loop's, with
genai's shared past/present buffer and without, and genai's greedy tokens are `edgeq generate`'s."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import FAMILIES, tiny_family_model
from edgeq import api
from edgeq.export.onnx import export
from edgeq.runtime.session import GENAI_CONFIG, OrtDecoder
from edgeq.runtime.tokenizer import load_tokenizer

from edgeq.runtime.genai import GenaiDecoder

# not importorskip: genai 0.18 aborts the process when imported before onnxruntime (runtime/genai.py)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_genai") is None,
                                reason="onnxruntime-genai is not installed")

PROMPT = [11, 402, 7, 3000, 18, 95, 256]
FORCED = [5, 1200, 33, 70, 9]  # prompt + forced = 12 tokens, past mistral's window of 5


def family_checkpoint(family, folder, tokenizer):
    """RTN W4 g32 of the tiny model of `family` (no calibration needed), with the bundled tokenizer; llama's
    down_proj at 8 bits, so a mixed-width export is among them."""
    model = tiny_family_model(family, vocab_size=len(tokenizer))
    model.save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    api.quantize(str(folder / "hf"), folder / "w4", api.QuantConfig(method="rtn", bits=4, group_size=32,
                                                          layer_grids=(("down_proj", 8, 32),) if family == "llama" else ()),
                 progress=False)
    return folder / "w4"


def without_buffer_sharing(folder, tmp_path):
    import shutil
    copy = tmp_path / "unshared"
    shutil.copytree(folder, copy)
    config = json.loads((copy / GENAI_CONFIG).read_text())
    config["search"]["past_present_share_buffer"] = False
    (copy / GENAI_CONFIG).write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("family", FAMILIES)
def test_genai_runs_each_family_like_our_loop(family, tmp_path, bundled_tokenizer):
    folder = tmp_path / "onnx"
    export(str(family_checkpoint(family, tmp_path, bundled_tokenizer)), folder, accuracy_level=0)
    config = json.loads((folder / GENAI_CONFIG).read_text())
    widths = {layer["bits"] for layer in json.loads((folder / "export.json").read_text())["layers"].values()}
    assert widths == ({4, 8} if family == "llama" else {4})
    assert config["model"]["type"] == family and config["search"]["past_present_share_buffer"] is True
    ours = OrtDecoder.from_folder(folder)
    assert config["model"]["decoder"]["head_size"] == ours.head_dim
    expected = ours.forced_logits(PROMPT, FORCED)
    for variant in (folder, without_buffer_sharing(folder, tmp_path)):
        got = GenaiDecoder(variant).forced_logits(PROMPT, FORCED)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    if family != "phi3":  # genai recomputes a longrope cache at Phi-3's own length only: the test below
        _, eos = load_tokenizer(folder)  # what `edgeq generate` stops at
        assert GenaiDecoder(folder).greedy(PROMPT, 32) == ours.greedy(PROMPT, 32, eos)


def test_phi3_longrope_switch_recomputes_the_cache_as_transformers_and_genai_do(tmp_path, bundled_tokenizer):
    """At Phi-3's real switch (original_max_position_embeddings 4096; the 128k models, Phi-3.5 and Phi-4-mini
    share it), a 4090-token prompt decoded greedily past 4097 tokens: transformers' generate() drops its cache
    and re-prefills with the long factors there, and so must our loop and genai, or the keys cached with the
    short factors stay."""
    import torch
    model = tiny_family_model("phi3", vocab_size=len(bundled_tokenizer), max_position_embeddings=8192,
                              original_max_position_embeddings=4096)
    model.save_pretrained(tmp_path / "hf")
    bundled_tokenizer.save_pretrained(tmp_path / "hf")
    export(str(tmp_path / "hf"), tmp_path / "onnx", fp32=True, accuracy_level=0)
    prompt = [int(t) for t in np.random.default_rng(5).integers(0, 40000, 4090)]
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                pad_token_id=0)[0, len(prompt):].tolist()
    ours = OrtDecoder.from_folder(tmp_path / "onnx")
    assert ours.recompute_at == 4096
    assert ours.greedy(prompt, 12) == theirs
    assert GenaiDecoder(tmp_path / "onnx").greedy(prompt, 12) == theirs
    crossing = np.array([prompt + theirs[:7]])  # 4097 tokens: the first sequence past the switch
    recomputed, _ = ours.forward(crossing, ours.empty_past())
    _, past = ours.forward(crossing[:, :-1], ours.empty_past())  # 4096 tokens, cached with the short factors
    stale, _ = ours.forward(crossing[:, -1:], past)
    assert np.abs(recomputed[0, -1] - stale[0, -1]).max() > 1e-3  # the recompute is not a no-op here


def test_matquant_export_sliced_to_4_bits_runs_in_genai(tmp_path, tiny_model_dir):
    from tests.conftest import calibration_text
    checkpoint = tmp_path / "mq"
    api.quantize(str(tiny_model_dir), checkpoint,
                 api.QuantConfig(method="matquant", bits=8, group_size=32, samples=4, seq_len=64),
                 calib=str(calibration_text()), progress=False)
    folder = tmp_path / "at4"
    export(str(checkpoint), folder, bits=4, accuracy_level=0)
    ours = OrtDecoder.from_folder(folder)
    np.testing.assert_allclose(GenaiDecoder(folder).forced_logits(PROMPT, FORCED),
                               ours.forced_logits(PROMPT, FORCED), rtol=1e-4, atol=1e-4)


def test_a_folder_without_genai_config_is_refused(tmp_path):
    from edgeq.errors import EdgeqError
    with pytest.raises(EdgeqError, match="no genai_config.json"):
        GenaiDecoder(tmp_path)


@pytest.fixture(scope="module")
def builder_folder(tiny_model_dir, tmp_path_factory):
    """The same tiny model through onnxruntime-genai's own model builder (int4, block 32): a decoder folder
    we did not write, with a symbolic head size and no position_ids input."""
    pytest.importorskip("onnx_ir", reason="genai's builder needs onnx-ir")
    out = tmp_path_factory.mktemp("builder") / "int4"
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tiny_model_dir),
                           "-o", str(out), "-p", "int4", "-e", "cpu"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_our_loop_reads_a_folder_made_by_genais_builder(builder_folder):
    ours = OrtDecoder.from_folder(builder_folder)
    assert not ours.feeds_positions and (ours.kv_heads, ours.head_dim) == (2, 16)
    np.testing.assert_allclose(ours.forced_logits(PROMPT, FORCED),
                               GenaiDecoder(builder_folder).forced_logits(PROMPT, FORCED), rtol=1e-4, atol=1e-4)


def test_eval_and_both_bench_engines_run_on_the_builders_folder(builder_folder, tmp_path):
    from tests.conftest import edgeq_cli, held_out_text
    edgeq_cli("eval", builder_folder, "--text", held_out_text(), "--max-windows", 2, "--seq-len", 64,
              "--json", tmp_path / "eval.json", "--quiet")
    assert json.loads((tmp_path / "eval.json").read_text())["perplexity"] > 1
    for engine in ("ort", "genai"):
        path = tmp_path / f"{engine}.json"
        edgeq_cli("bench", builder_folder, "--engine", engine, "--runs", 1, "--warmup", 0, "--prompt", 8,
                  "--gen", 4, "--threads", 1, "--json", path, "--quiet")
        [model] = json.loads(path.read_text())["models"]
        assert model["decode_ms_per_token"]["n"] == 4 and model["prefill_ms"]["n"] == 1


def test_a_graph_without_a_kv_cache_is_refused_by_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgeq.errors import EdgeqError
    from edgeq.runtime.session import cpu_session
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "s"])])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    with pytest.raises(EdgeqError, match="missing attention_mask"):
        OrtDecoder(cpu_session(tmp_path / "m.onnx"))


def test_genai_engine_refuses_options_it_cannot_honour():
    from edgeq.errors import EdgeqError
    from edgeq.runtime import bench
    with pytest.raises(EdgeqError, match="not --provider, --ort-format"):
        bench.Settings(engine="genai", provider="cuda", ort_format=True).check()


def test_the_genai_engine_needs_no_torch(tmp_path):
    """On the device: opening a folder through genai imports no torch (it once did, through export/)."""
    code = ("import sys\nfrom edgeq.errors import EdgeqError\nfrom edgeq.runtime.genai import GenaiDecoder\n"
            f"try:\n    GenaiDecoder({str(tmp_path)!r})\nexcept EdgeqError:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)

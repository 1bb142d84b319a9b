"""The device-side runtime: provider detection and refusals, percentile maths on a scripted clock, the JSON
report, a real bench of a tiny exported model, and an import that pulls in no torch."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edgeq.cli import main
from edgeq.errors import EdgeqError
from tests.conftest import edgeq_cli, held_out_text
from edgeq.runtime import bench, providers, report
from edgeq.export.onnx import export


def test_cpu_is_always_available_and_auto_picks_a_present_provider():
    assert "cpu" in providers.available()
    assert providers.resolve("cpu") == "CPUExecutionProvider"
    assert providers.resolve("auto") in {providers.PROVIDERS[p] for p in providers.available()}


def test_a_missing_provider_is_refused_with_how_to_get_it():
    missing = next(p for p in ("qnn", "nnapi", "coreml", "dml") if p not in providers.available())
    with pytest.raises(EdgeqError, match=f"no {missing} provider.*to get it"):
        providers.resolve(missing)
    with pytest.raises(EdgeqError, match="unknown provider"):
        providers.resolve("tpu")


def test_summary_percentiles_are_numpys_linear_interpolation():
    values = [0.004, 0.001, 0.003, 0.002, 0.010]
    s = bench.summary(values)
    assert s["p50"] == pytest.approx(3.0) and s["p90"] == pytest.approx(7.6) and s["p99"] == pytest.approx(9.76)
    assert (s["min"], s["max"], s["n"]) == (pytest.approx(1.0), pytest.approx(10.0), 5)
    assert s["mean"] == pytest.approx(4.0) and s["std"] == pytest.approx(np.std([4, 1, 3, 2, 10]))


class ScriptedClock:
    """Each call advances by the next step: the measured durations are known exactly."""
    def __init__(self, steps):
        self.now, self.steps = 0.0, iter(steps)

    def __call__(self):
        self.now += next(self.steps, 0.0)
        return self.now


class FakeDecoder:
    """Logits that always pick token 3; no session."""
    def empty_past(self):
        return {}

    def forward(self, ids, past):
        logits = np.zeros((1, ids.shape[1], 8), dtype=np.float32)
        logits[..., 3] = 1
        return logits, past


def test_one_run_times_prefill_and_every_decode_step_with_the_given_clock():
    model = bench.Model(folder=None, path=None, decoder=FakeDecoder(), load_s=0.0, load_rss_mb=None)
    # clock calls: start, end of prefill, then (start, end) per token; the steps are the gaps
    clock = ScriptedClock([0.0, 0.050, 1.0, 0.010, 1.0, 0.020, 1.0, 0.030])
    prefill, steps = bench.one_run(model, np.zeros((1, 4), dtype=np.int64), 3, clock)
    assert prefill == pytest.approx(0.050)
    assert steps == pytest.approx([0.010, 0.020, 0.030])


@pytest.fixture(scope="module")
def tiny_export(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "w4"
    export(str(tiny_checkpoint), out, ort_format=True)
    return out


def test_real_bench_of_a_tiny_export_writes_a_complete_report(tiny_export, tmp_path):
    json_path = tmp_path / "r.json"
    out = edgeq_cli("bench", tiny_export, tiny_export, "--runs", 2, "--warmup", 1, "--prompt", 8, "--gen", 4,
                    "--threads", 1, "--json", json_path, "--quiet")
    rep = report.load_report(json_path)
    assert rep["schema"] == report.SCHEMA and rep["settings"]["runs"] == 2 and len(rep["models"]) == 2
    assert rep["machine"]["cores"] >= 1 and "cpu" in rep["machine"]["providers_available"]
    for model in rep["models"]:
        assert model["decode_ms_per_token"]["n"] == 2 * 4 and model["prefill_ms"]["n"] == 2
        assert len(model["samples_ms"]["decode"]) == 8 and model["e2e_tokens_per_s"]["p50"] > 0
        assert model["file_mb"] > 0 and model["load_s"] > 0 and model["load_rss_mb"] is not None
    assert rep["settings"]["shared_pool"] and rep["peak_rss_mb"] > 0 and "| w4 |" in out


def test_bench_runs_the_ort_format_and_saves_the_optimized_graph(tiny_export, tmp_path):
    settings = bench.Settings(threads=1, prompt=4, gen=2, runs=1, warmup=0, ort_format=True,
                              optimization="basic", save_optimized=str(tmp_path / "opt"), shared_pool=False)
    [model] = bench.bench([tiny_export], settings)
    assert len(model.decode) == 2 and (tmp_path / "opt" / "w4.ort").stat().st_size > 0


def test_compare_renders_two_reports_in_one_table_and_plot(tiny_export, tmp_path):
    pytest.importorskip("matplotlib")
    for name in ("laptop", "phone"):
        edgeq_cli("bench", tiny_export, "--runs", 1, "--warmup", 0, "--prompt", 4, "--gen", 2,
                  "--json", tmp_path / f"{name}.json", "--quiet")
    out = edgeq_cli("bench", "compare", tmp_path / "laptop.json", tmp_path / "phone.json", "--plot", tmp_path / "cmp.png")
    assert "| laptop | w4 |" in out and "| phone | w4 |" in out
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_bench_inputs_are_one_clear_line(tmp_path, capsys):
    assert main(["bench", str(tmp_path)]) == 2
    assert "no model.onnx" in capsys.readouterr().err
    assert main(["bench", "compare", str(tmp_path / "missing.json")]) == 2
    assert "cannot read bench report" in capsys.readouterr().err
    (tmp_path / "x.json").write_text(json.dumps({"schema": 1}))
    assert main(["bench", "compare", str(tmp_path / "x.json")]) == 2
    assert "not an edgeq bench report" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_model_onnx_is_one_line_in_every_command(damage, tiny_export, tmp_path, capsys):
    import shutil
    folder = tmp_path / damage
    shutil.copytree(tiny_export, folder)
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                                         "garbage": bytes(range(256)) * 20}[damage])
    for command in (["bench", str(folder), "--runs", "1", "--warmup", "0", "--quiet"],
                    ["eval", str(folder), "--max-windows", "1", "--seq-len", "32", "--quiet"],
                    ["generate", str(folder), "--prompt", "Hello"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"onnxruntime cannot load {folder / 'model.onnx'}" in err and len(err.strip().splitlines()) == 1


def test_lengths_past_the_models_positions_and_empty_prompts_are_refused_before_running(tiny_export, tmp_path,
                                                                                       capsys):
    limit = json.loads((tiny_export / "config.json").read_text())["max_position_embeddings"]
    cases = [(["generate", str(tiny_export), "--prompt", "Hello", "--max-new-tokens", str(limit)],
              f"needs {limit + 1} positions, but the model has {limit}"),
             (["generate", str(tiny_export), "--prompt", ""], "the prompt is empty"),
             (["eval", str(tiny_export), "--seq-len", str(limit + 1)], "but the model has"),
             (["bench", str(tiny_export), "--prompt", str(limit), "--gen", "1"], "but the model has"),
             (["eval", str(tiny_export), "--json", str(tmp_path / "no" / "r.json")], "--json"),
             (["bench", str(tiny_export), "--json", str(tmp_path)], "is a folder, not a file")]
    for command, message in cases:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_runtime_imports_no_torch():
    code = ("import sys, edgeq.runtime.bench, edgeq.runtime.report, edgeq.runtime.providers, edgeq.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'numba', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# Runs the CLI with the quantize extra's modules made unimportable: the device's runtime-only install.
RUNTIME_ONLY = """
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "numba", "safetensors", "gguf", "accelerate"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
sys.argv = ["edgeq", *sys.argv[1:]]
runpy.run_module("edgeq.cli", run_name="__main__")
"""


def test_eval_of_an_export_runs_without_torch_on_the_windows_transformers_gives(tiny_export, tmp_path):
    from transformers import AutoTokenizer

    from edgeq.calib import data
    from edgeq.runtime.session import OrtDecoder
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, "eval", str(tiny_export), "--text", str(held_out_text()),
                           "--seq-len", "64", "--max-windows", "3", "--json", str(out), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    # the reference: the transformers tokenizer's windows (as calibration makes them), the same session
    tokens = data.tokenize(AutoTokenizer.from_pretrained(tiny_export), held_out_text().read_text())
    windows = data.eval_windows(tokens, 64, 3).numpy()
    decoder = OrtDecoder.from_folder(tiny_export)
    nll = [decoder.window_nll(windows[i:i + 1]) for i in range(3)]
    expected = math.exp(sum(s for s, _ in nll) / sum(c for _, c in nll))
    assert (result["windows"], result["runtime"]) == (3, "onnxruntime")
    assert result["perplexity"] == pytest.approx(expected, rel=1e-9)


def test_eval_of_a_checkpoint_without_torch_names_the_extra(tiny_checkpoint):
    done = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, "eval", str(tiny_checkpoint), "--seq-len", "64"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "pip install 'edgeq[quantize]'" in done.stderr


def test_generate_needs_only_the_tokenizers_library(tiny_export, capsys):
    from edgeq.runtime.session import OrtDecoder
    from edgeq.runtime.tokenizer import load_tokenizer
    assert main(["generate", str(tiny_export), "--prompt", "It is a truth", "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr().out
    tokenizer, _ = load_tokenizer(tiny_export)
    prompt = tokenizer.encode("It is a truth", add_special_tokens=False).ids
    expected = OrtDecoder.from_folder(tiny_export).greedy(prompt, 5)
    assert text == "It is a truth" + tokenizer.decode(expected) + "\n"


def test_a_process_shares_one_pool_and_refuses_another_thread_count(tiny_export):
    code = (f"from edgeq.runtime.session import open_session, use_shared_thread_pool\n"
            f"from edgeq.errors import EdgeqError\n"
            f"use_shared_thread_pool(1)\n"
            f"open_session('{tiny_export}/model.onnx', threads=1)\n"
            f"try:\n    open_session('{tiny_export}/model.onnx', threads=2)\nexcept EdgeqError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "already shares a pool of 1 threads" in done.stdout


@pytest.mark.skipif("cuda" not in providers.available(), reason="this onnxruntime build has no CUDA provider")
def test_bench_on_cuda(tiny_export, tmp_path):
    out = edgeq_cli("bench", tiny_export, "--provider", "cuda", "--runs", 1, "--warmup", 1, "--prompt", 8,
                    "--gen", 2, "--json", tmp_path / "cuda.json", "--quiet")
    rep = report.load_report(tmp_path / "cuda.json")
    assert rep["settings"]["provider"] == "cuda" and "| w4 |" in out


def test_isa_flags_are_read_from_x86_and_arm_cpuinfo():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni\n"
    assert report.parse_cpuinfo(x86, "x86_64", "?") == ("AMD EPYC 9654", ["sse4_2", "avx", "avx2", "fma",
                                                                          "avx512f", "avx512_vnni"])
    arm = ("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes asimddp sve i8mm bf16\n"
           "CPU implementer\t: 0x41\n")
    name, flags = report.parse_cpuinfo(arm, "aarch64", "aarch64")
    assert name == "aarch64" and flags == ["asimd", "asimddp", "i8mm", "sve", "bf16", "neon"]


def test_arm_features_under_emulation_come_from_the_auxiliary_vector():
    import struct
    # AT_HWCAP with fp, asimd, asimddp (bit 20); AT_HWCAP2 with i8mm (bit 13); then AT_NULL
    auxv = struct.pack("<6Q", 16, (1 << 0) | (1 << 1) | (1 << 20), 26, 1 << 13, 0, 0)
    assert report.hwcap_flags(auxv) == ["asimd", "asimddp", "i8mm", "neon"]
    assert report.hwcap_flags(struct.pack("<2Q", 0, 0)) == []

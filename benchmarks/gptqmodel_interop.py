"""GPTQModel against edgeq, both ways: act-order folders GPTQModel wrote, read by edgeq, and edgeq's GPTQ folder
loaded by transformers through GPTQModel, on a random-init Llama (hidden 128, 2 layers, the bundled tokenizer).

    VENV_GQ/bin/python benchmarks/gptqmodel_interop.py produce   # GPTQModel quantizes (desc_act on and off)
    python benchmarks/gptqmodel_interop.py ours                  # edgeq quantizes the same float model, GPTQ folder
    VENV_GQ/bin/python benchmarks/gptqmodel_interop.py load      # transformers (+ GPTQModel's kernels) loads each
    python benchmarks/gptqmodel_interop.py check                 # edgeq reads each: logits, ONNX, rows
    python benchmarks/gptqmodel_interop.py builder               # onnxruntime-genai's builder reads the 4-bit ones

GPTQModel 7.7 needs torch >= 2.14.1 and transformers >= 5.20, which edgeq's own pins (torch 2.13 in CI) do not
install: it lives in a second virtual environment (VENV_GQ: `pip install torch==2.14.1`, then
`BUILD_CUDA_EXT=0 pip install --no-build-isolation gptqmodel==7.7.0`), so the two halves pass files: the folders
and transformers' logits (runs/gptqmodel/). What is checked:
- an act-order (desc_act) folder GPTQModel wrote, its g_idx and all, read by edgeq: edgeq's float model's logits
  against transformers' own load of the folder (GPTQModel's CPU kernel), and edgeq's ONNX export (the columns
  sorted by group, one Gather on the activations) against the same;
- edgeq's own GPTQ folder, loaded by transformers through GPTQModel: its logits against edgeq's.
Rows to benchmarks/results/gptqmodel_interop.jsonl.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness import RESULTS_DIR, ROOT, append_result, edgeq_cli, read_results, stamp  # stdlib only: both venvs

WORK = ROOT / "runs" / "gptqmodel"
RESULTS = RESULTS_DIR / "gptqmodel_interop.jsonl"
BUILDER_RESULTS = RESULTS_DIR / "gptqmodel_builder.jsonl"
IDS = [1, 5, 9, 42, 7, 300, 1200, 77, 4096, 13, 250, 31999]
# (folder name, GPTQModel's QuantizeConfig): act-order at 4 bits sym and asym and at 2 and 8 bits, and the
# column-order default (act_group_aware) for contrast
PRODUCED = {"gptqmodel-w4-g32-desc-act-sym": dict(bits=4, group_size=32, sym=True, desc_act=True),
            "gptqmodel-w4-g32-desc-act-asym": dict(bits=4, group_size=32, sym=False, desc_act=True),
            "gptqmodel-w2-g32-desc-act-asym": dict(bits=2, group_size=32, sym=False, desc_act=True),
            "gptqmodel-w8-g64-desc-act-sym": dict(bits=8, group_size=64, sym=True, desc_act=True),
            "gptqmodel-w4-g32-default": dict(bits=4, group_size=32, sym=True)}
OURS = "edgeq-gptq-w4-g32"


def float_model() -> Path:
    """The random-init float Llama both tools quantize, with the bundled tokenizer (GPTQModel loads one)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    folder = WORK / "float"
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    for file in (WORK / "tokenizer").iterdir():
        shutil.copy(file, folder)
    return folder


def calibration() -> list[dict]:
    import torch
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 49152, (64,), generator=g).tolist(), "attention_mask": [1] * 64}
            for _ in range(16)]


def produce() -> None:
    import os
    from gptqmodel import GPTQModel, QuantizeConfig
    source = float_model()
    os.chdir(WORK)  # GPTQModel writes its logs/ into the working directory
    for name, options in PRODUCED.items():
        if (WORK / name / "config.json").is_file():
            continue
        options = dict(options, act_group_aware=False) if options.get("desc_act") else options
        model = GPTQModel.load(str(source), QuantizeConfig(**options), device="cpu")
        model.quantize(calibration(), batch_size=1)
        model.save(str(WORK / name))


def load() -> None:
    """transformers' own load of every folder (GPTQModel's kernel on the CPU), logits of IDS to NAME.npy."""
    import torch
    import gptqmodel
    from transformers import AutoModelForCausalLM
    for folder in quantized_folders():
        model = AutoModelForCausalLM.from_pretrained(str(folder), device_map="cpu", dtype=torch.float32)
        kernels = sorted({f"{type(m).__module__}.{type(m).__name__}" for n, m in model.named_modules()
                          if n.endswith("proj")})  # what transformers put where the linears were
        with torch.no_grad():
            logits = model(torch.tensor([IDS])).logits[0].float().numpy()
        np.save(folder / "transformers_logits.npy", logits)
        (folder / "transformers_load.json").write_text(json.dumps(
            {"kernels": kernels, "gptqmodel": gptqmodel.__version__, "torch": torch.__version__,
             "transformers": __import__("transformers").__version__}))


def quantized_folders() -> list[Path]:
    return sorted(p for p in WORK.iterdir() if (p / "config.json").is_file()
                  and "quantization_config" in json.loads((p / "config.json").read_text()))


def ours() -> None:
    """edgeq's GPTQ W4 g32 of the same float model, written as a GPTQ folder."""
    source = float_model()
    checkpoint = WORK / "edgeq-checkpoint"
    if not (checkpoint / "quantization.json").is_file():
        edgeq_cli("quantize", source, "--bits", 4, "--group-size", 32, "--samples", 16, "--seq-len", 64,
                  "--calib", "builtin:novel", "--out", checkpoint, "--quiet")
    if not (WORK / OURS).exists():
        edgeq_cli("export", checkpoint, "--format", "gptq", "--out", WORK / OURS)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check() -> None:
    import torch
    from edgeq.io.quantized_folder import load_quantized_folder
    from edgeq.runtime.session import OrtDecoder
    for folder in [p for p in quantized_folders() if (p / "transformers_logits.npy").is_file()]:
        theirs = np.load(folder / "transformers_logits.npy")
        model, qweights, _ = load_quantized_folder(folder)
        with torch.no_grad():
            mine = model(torch.tensor([IDS])).logits[0].float().numpy()
        onnx_dir = WORK / "onnx" / folder.name
        if onnx_dir.exists():
            shutil.rmtree(onnx_dir)
        edgeq_cli("export", folder, "--out", onnx_dir, "--accuracy-level", 0)
        exported = OrtDecoder.from_folder(onnx_dir).forced_logits(IDS[:1], IDS[1:])
        config = json.loads((folder / "config.json").read_text())["quantization_config"]
        row = {"folder": folder.name, "written_by": "edgeq" if folder.name == OURS else "gptqmodel",
               "bits": config["bits"], "group_size": config["group_size"], "sym": config["sym"],
               "desc_act": config["desc_act"],
               "act_order_linears": sum(qw.input_order is not None for qw in qweights.values()),
               "linears": len(qweights), "transformers_load": json.loads((folder / "transformers_load.json").read_text()),
               "edgeq_torch_vs_transformers": relative(mine, theirs),
               "edgeq_onnx_vs_transformers": relative(exported, theirs),
               "edgeq_onnx_vs_edgeq_torch": relative(exported, mine),
               "gathers_in_onnx": onnx_gathers(onnx_dir)}
        append_result(RESULTS, {**row, **stamp()})
        print(json.dumps(row))


def builder() -> None:
    """onnxruntime-genai's builder on the same 4-bit folders: it maps desc_act onto MatMulNBits' own g_idx input
    (builders/base.py, use_g_idx), the path benchmarks/act_order.py measured. Its logits against transformers'."""
    import onnx
    from edgeq.runtime.session import OrtDecoder
    for folder in [p for p in quantized_folders() if (p / "transformers_logits.npy").is_file()]:
        config = json.loads((folder / "config.json").read_text())["quantization_config"]
        if config["bits"] != 4:
            continue  # the builder's documented width
        built = WORK / "builder" / folder.name
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder), "-o", str(built),
                        "-p", "int4", "-e", "cpu", "--extra_options", "accuracy_level=0",
                        "nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather"], check=True,
                       capture_output=True)
        graph = onnx.load(str(built / "model.onnx"), load_external_data=False).graph
        with_g_idx = sum(n.op_type == "MatMulNBits" and len(n.input) > 4 and n.input[4] != "" for n in graph.node)
        logits = OrtDecoder.from_folder(built).forced_logits(IDS[:1], IDS[1:])
        row = {"folder": folder.name, "reader": "onnxruntime-genai builder", "desc_act": config["desc_act"],
               "sym": config["sym"], "matmulnbits_with_g_idx": with_g_idx,
               "builder_onnx_vs_transformers": relative(logits, np.load(folder / "transformers_logits.npy"))}
        append_result(BUILDER_RESULTS, {**row, **stamp()})
        print(json.dumps(row))


def onnx_gathers(folder: Path) -> int:
    import onnx
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return sum(node.op_type == "Gather" and node.output[0].endswith("_gathered_input") for node in graph.node)


def builder_cell(row: dict | None) -> str:
    if row is None:
        return "- (4 bits only)"
    return f"{row['builder_onnx_vs_transformers']:.1e} ({row['matmulnbits_with_g_idx']})"


def table() -> str:
    """The markdown table of the latest row per folder (docs/export.md's generated block)."""
    latest = {row["folder"]: row for row in read_results(RESULTS)}
    built = {row["folder"]: row for row in read_results(BUILDER_RESULTS)}
    lines = ["| folder | written by | bits | group | sym | desc_act | act-order linears (Gathers in ONNX) | "
             "transformers' kernel | edgeq torch vs transformers | edgeq ONNX vs transformers | ONNX vs edgeq torch | "
             "genai builder's ONNX vs transformers (its MatMulNBits with g_idx) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(latest.items()):
        kernel = ", ".join(k.rsplit(".", 1)[1] for k in r["transformers_load"]["kernels"])
        lines.append(f"| {name} | {r['written_by']} | {r['bits']} | {r['group_size']} | {r['sym']} | "
                     f"{r['desc_act']} | {r['act_order_linears']} / {r['linears']} ({r['gathers_in_onnx']}) | "
                     f"{kernel} | {r['edgeq_torch_vs_transformers']:.1e} | {r['edgeq_onnx_vs_transformers']:.1e} | "
                     f"{r['edgeq_onnx_vs_edgeq_torch']:.1e} | {builder_cell(built.get(name))} |")
    some = next(iter(latest.values()), None)
    versions = "" if some is None else (f"GPTQModel {some['transformers_load']['gptqmodel']}, transformers "
                                         f"{some['transformers_load']['transformers']}, torch {some['transformers_load']['torch']}; ")
    return "\n".join(lines) + (f"\n\nRelative logit errors over {len(IDS)} positions; {versions}"
                               "`python benchmarks/gptqmodel_interop.py check` and `... builder` (the module docstring has the steps).")


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["--table"]:
        print(table())
        return 0
    if not (WORK / "tokenizer").is_dir():
        if sys.argv[1:] != ["ours"] and sys.argv[1:] != ["check"]:
            raise SystemExit("run `python benchmarks/gptqmodel_interop.py ours` in edgeq's environment first")
        from edgeq.io import models
        models.load_tokenizer(models.bundled_source()).save_pretrained(WORK / "tokenizer")
    {"produce": produce, "ours": ours, "load": load, "check": check, "builder": builder}[sys.argv[1]]()
    return 0


if __name__ == "__main__":
    sys.exit(main())

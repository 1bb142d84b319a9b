"""The deployable front: stored bytes per weight against perplexity x fp32 on Persuasion and news, for what
edgeq exports and for llama.cpp's own types made from the same float weights.

    python benchmarks/front.py edgeq CKPT [CKPT ...] [--lm-head 8|4|ckpt] [--slice BITS]  # export, score, a row each
    python benchmarks/front.py llamacpp Q4_K_M Q3_K_M Q2_K ...        # llama.cpp's quantizer, scored through llama-cpp-python
    python benchmarks/front.py gguf CKPT [CKPT ...]                   # edgeq's GGUF export (W4/W8 g32), run by llama.cpp
    python benchmarks/front.py builder "" block_size=128              # onnxruntime-genai's builder int4 (its --extra_options)
    python benchmarks/front.py --table                                # the markdown table and the PNG from the rows

What a point is, on both sides, is what a device loads and runs:
- edgeq: `edgeq export CKPT --lm-head 8` (a tied embedding shares the head's 8-bit codes), accuracy level 4
  (int8 activations, onnxruntime's fast CPU path), scored by `edgeq eval` on the ONNX folder (onnxruntime);
  A point marked "4-bit head (gptq)" has its head solved with the model instead (`edgeq quantize --lm-head 4`,
  GPTQ on the final norm's outputs; `front.py edgeq CKPT --lm-head ckpt`), and the tied lookup shares it too.
  Each row names the commit it was measured at: exports since 6a1617e compute the rotary tables in the graph
  (2.1 MB less on disk), since ef7a3ea the lookup shares the head's scales (2.2 MB at 8 bits, 1.8 MB at 4).
- llama.cpp: the bundled Q4_1 GGUF re-quantized by llama.cpp (allow_requantize): llama.cpp de-quantizes each
  tensor to float32 first, and that float32 is exactly the float model edgeq starts from (edgeq's float cache
  is the same de-quantization), so each type is llama.cpp's quantizer on the same float weights. Scored
  through llama-cpp-python on edgeq's own token windows (the same ids, 40 x 512 from the start of each text).
Bytes are the tensors' stored bytes (the ONNX initializers; the GGUF's tensor data, from the gguf library),
tokenizer and metadata left out on both sides, over the model's parameter count (the tied table once).
Perplexity x fp32 divides by the fp32 row of benchmarks/results/quality.jsonl (the same windows, torch).
- edgeq in llama.cpp: `edgeq export CKPT --format gguf` (W4 g32 sym -> Q4_0, asym -> Q4_1, W8 g32 -> Q8_0),
  scored through llama-cpp-python as llama.cpp's own types are; the row also keeps `edgeq eval CKPT` (torch,
  the same windows) as checkpoint_perplexity, so llama.cpp's reading of the file is checked against edgeq's.
- onnxruntime-genai's builder: `-p int4 -e cpu` on the same float folder (round to nearest, symmetric, its
  4-bit tied head and embedding; benchmarks/vs_genai_builder.py builds it), scored as edgeq's folders are.
No importance matrix: llama-cpp-python builds llama.cpp's library, not its llama-imatrix tool.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np

from harness import RESULTS_DIR, ROOT, append_result, edgeq_cli, news_text, read_results, stamp

RESULTS = RESULTS_DIR / "front.jsonl"
QUALITY = RESULTS_DIR / "quality.jsonl"
TABLE_DOC = ROOT / "docs" / "results" / "front.md"
PLOT = RESULTS_DIR / "front.png"
WORK = ROOT / "runs" / "front"
TEXTS = (("persuasion", "builtin:persuasion"), ("news", None))  # None: the news text (harness.news_text)
SEQ_LEN, WINDOWS = 512, 40
ONNX_TOOLS = ("edgeq", "genai builder")  # the points that run in onnxruntime


def text_paths() -> list[tuple[str, str]]:
    return [(label, path or str(news_text())) for label, path in TEXTS]


def fp32_perplexities() -> dict[str, float]:
    rows = [r for r in read_results(QUALITY) if r["label"] == "fp32" and r["eval"].get("news", {}).get("windows") == WINDOWS]
    if not rows:
        raise SystemExit("no fp32 row in benchmarks/results/quality.jsonl: run benchmarks/quality.py --row fp32")
    return {label: rows[-1]["eval"][label]["perplexity"] for label, _ in TEXTS}


def parameter_count() -> int:
    from edgeq.io import models
    return models.parameter_bytes_of_config(models.load_config(models.bundled_source())) // 4


# ---- edgeq points ----

def onnx_tensor_bytes(folder: Path) -> int:
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    total = 0
    for init in graph.initializer:
        total += int(ExternalDataInfo(init).length) if uses_external_data(init) else len(init.raw_data)
    return total


def edgeq_perplexities(target: Path, scores: Path) -> dict[str, float]:
    """`edgeq eval` of a checkpoint or ONNX folder on the front's windows, {text label: perplexity}."""
    edgeq_cli("eval", target, "--text", *[p for _, p in text_paths()], "--seq-len", SEQ_LEN, "--max-windows",
              WINDOWS, "--json", scores, "--quiet")
    return {label: r["perplexity"] for (label, _), r in zip(TEXTS, json.loads(scores.read_text()))}


def edgeq_point(checkpoint: Path, label: str, lm_head: str, slice_bits: str | None = None) -> dict:
    """lm_head "ckpt": the head the checkpoint was quantized with (`edgeq quantize --lm-head`, solved on its
    own Hessian), exported as it is; else the exporter's round-to-nearest head of that width. slice_bits: one
    width (or a Mix'n'Match average) of a nested checkpoint, `edgeq export --bits`."""
    folder = WORK / f"{checkpoint.name}{'-at' + slice_bits if slice_bits else ''}-head{lm_head}"
    if not (folder / "model.onnx").is_file():
        edgeq_cli("export", checkpoint, "--out", folder, *([] if lm_head == "ckpt" else ["--lm-head", lm_head]),
                  *(["--bits", slice_bits] if slice_bits else []))
    perplexity = edgeq_perplexities(folder, WORK / f"{folder.name}.eval.json")
    meta = json.loads((checkpoint / "quantization.json").read_text())
    if lm_head == "ckpt":
        lm_head = json.loads((folder / "export.json").read_text())["lm_head"]
    return {"tool": "edgeq", "label": label, "checkpoint": checkpoint.name, "lm_head": lm_head, "slice_bits": slice_bits,
            "transforms": [t["name"] for t in meta.get("transforms") or []], "tensor_bytes": onnx_tensor_bytes(folder),
            "perplexity": perplexity}


# ---- llama.cpp points ----

def gguf_tensor_bytes(path: Path) -> int:
    from gguf import GGUFReader
    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


def requantized(kind: str) -> Path:
    import llama_cpp
    from edgeq.io import models
    source = models.bundled_source()
    gguf = source.folder / source.gguf_file
    if kind == "Q4_1":
        return gguf
    out = WORK / f"{gguf.stem}-{kind}.gguf"
    if not out.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
        params.allow_requantize = True
        if llama_cpp.llama_model_quantize(str(gguf).encode(), str(out).encode(), params) != 0:
            raise SystemExit(f"llama.cpp could not quantize to {kind}")
    return out


def windows_of(path: str) -> np.ndarray:
    from edgeq.evaluation.heldout import eval_windows, read_text, sequence_start, token_ids
    from edgeq.io import models
    tokenizer = models.load_tokenizer(models.bundled_source())
    return eval_windows(token_ids(tokenizer, read_text(path)[0]), SEQ_LEN, WINDOWS, sequence_start(tokenizer))


def llamacpp_perplexity(llm, windows: np.ndarray) -> float:
    """exp(mean NLL of every next token of every window), the windows scored one at a time from an empty cache."""
    nll, count = 0.0, 0
    for window in windows:
        llm.reset()
        llm.eval([int(t) for t in window])
        logits = np.asarray(llm.scores[:len(window) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        nll += float((log_z - logits[np.arange(len(window) - 1), window[1:]]).sum())
        count += len(window) - 1
    return math.exp(nll / count)


def llamacpp_perplexities(path: Path, threads: int) -> dict[str, float]:
    import llama_cpp
    llm = llama_cpp.Llama(str(path), n_ctx=SEQ_LEN, n_batch=SEQ_LEN, logits_all=True, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    return {label: llamacpp_perplexity(llm, windows_of(p)) for label, p in text_paths()}


def llamacpp_point(kind: str, threads: int) -> dict:
    import llama_cpp
    path = requantized(kind)
    return {"tool": "llama.cpp", "label": f"llama.cpp {kind}" + (" (the bundled source)" if kind == "Q4_1" else ""),
            "type": kind, "llama_cpp_python": llama_cpp.__version__, "tensor_bytes": gguf_tensor_bytes(path),
            "perplexity": llamacpp_perplexities(path, threads)}


def edgeq_gguf_point(checkpoint: Path, label: str, threads: int) -> dict:
    """edgeq's GGUF of a checkpoint, run by llama.cpp, beside edgeq's own (torch) scores of the checkpoint."""
    import llama_cpp
    path = WORK / f"{checkpoint.name}.gguf"
    if not path.is_file():
        edgeq_cli("export", checkpoint, "--format", "gguf", "--out", path)
    return {"tool": "edgeq in llama.cpp", "label": label, "checkpoint": checkpoint.name,
            "llama_cpp_python": llama_cpp.__version__, "tensor_bytes": gguf_tensor_bytes(path),
            "perplexity": llamacpp_perplexities(path, threads),
            "checkpoint_perplexity": edgeq_perplexities(checkpoint, WORK / f"{checkpoint.name}.torch.eval.json")}


# ---- onnxruntime-genai's builder points ----

def builder_point(options: str) -> dict:
    """The builder's int4 folder of the bundled float weights, `options` its --extra_options ("" its defaults)."""
    import vs_genai_builder
    extra = tuple(options.split())
    entry = vs_genai_builder.Entry("genai builder int4 " + (" ".join(extra) or "(defaults: block 32)"), extra)
    folder, _ = vs_genai_builder.build(entry, WORK)
    return {"tool": "genai builder", "label": entry.name, "builder_options": list(extra),
            "tensor_bytes": onnx_tensor_bytes(folder), "perplexity": edgeq_perplexities(folder, WORK / f"{entry.slug}.eval.json")}


# ---- the table and the plot ----

def with_ratios(rows: list[dict]) -> list[dict]:
    fp, params = fp32_perplexities(), parameter_count()

    def over(perplexity: dict) -> dict:
        return {label: perplexity[label] / fp[label] for label, _ in TEXTS}
    out = []
    for r in rows:
        row = {**r, "bits_per_weight": 8 * r["tensor_bytes"] / params, "over_fp": over(r["perplexity"])}
        if "checkpoint_perplexity" in r:
            row["checkpoint_over_fp"] = over(r["checkpoint_perplexity"])
        out.append(row)
    return sorted(out, key=lambda r: r["bits_per_weight"])


# rows of a default that no longer exists: mixed plans on the candidates 2:64,4:128,8:128 (padded on SmolLM2's
# K = 576), the default before e5827ea; today's default is the "(2/4/8 g64)" rows beside them
RETIRED = {"edgeq gptq mixed 3.3 bpw", "edgeq gptq mixed 4.0 bpw"}


def latest_rows() -> list[dict]:
    rows = {}
    for r in read_results(RESULTS):
        rows[(r["tool"], r["label"])] = r
    return [r for r in rows.values() if r["label"] not in RETIRED]


def render_table(rows: list[dict]) -> str:
    lines = ["| point | runs in | MB (tensors) | stored bits / weight | Persuasion x fp32 | news x fp32 | "
             "the checkpoint in torch (Persuasion / news) | commit |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        own = r.get("checkpoint_over_fp")
        own = f"{own['persuasion']:.4f} / {own['news']:.4f}" if own else "-"
        runtime = "onnxruntime" if r["tool"] in ONNX_TOOLS else "llama.cpp"
        lines.append(f"| {r['label']} | {runtime} | {r['tensor_bytes'] / 2 ** 20:.1f} | {r['bits_per_weight']:.3f} | "
                     f"{r['over_fp']['persuasion']:.4f} | {r['over_fp']['news']:.4f} | {own} | {r['commit']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(TEXTS), figsize=(11, 4.5))
    for ax, (label, _) in zip(axes, TEXTS):
        for tool, marker in (("edgeq", "o"), ("llama.cpp", "s"), ("edgeq in llama.cpp", "^"), ("genai builder", "D")):
            points = [r for r in rows if r["tool"] == tool]
            ax.scatter([r["bits_per_weight"] for r in points], [r["over_fp"][label] for r in points], marker=marker,
                       label=tool)
            for r in points:
                ax.annotate(r["label"].removeprefix("llama.cpp ").removeprefix("edgeq "),
                            (r["bits_per_weight"], r["over_fp"][label]), fontsize=6)
        ax.set_yscale("log")
        ax.set_xlabel("stored bits per weight (tensors / parameters)")
        ax.set_ylabel(f"{label} perplexity x fp32")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M: the deployable front (edgeq ONNX, head 8-bit, level 4; llama.cpp types)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def table() -> str:
    """The generated block of docs/results/front.md (benchmarks/generated_docs.py renders it from the rows)."""
    return render_table(with_ratios(latest_rows()))


def write_docs() -> None:
    rows = with_ratios(latest_rows())
    TABLE_DOC.write_text("# The deployable front\n\n" + (__doc__.split("\n\n", 2)[2].strip())
                         + "\n\n<!-- generated:front -->\n" + render_table(rows) + "\n<!-- /generated:front -->\n"
                         + "\n![front](../../benchmarks/results/front.png)\n")
    plot(rows, PLOT)
    print(render_table(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", nargs="?", choices=["edgeq", "llamacpp", "gguf", "builder"])
    parser.add_argument("items", nargs="*", help="edgeq checkpoints (edgeq, gguf), llama.cpp types (Q4_K_M, "
                        "Q3_K_M, Q2_K, ...), or the builder's --extra_options, one quoted string a point")
    parser.add_argument("--label", action="append", default=[], help="edgeq: a label per checkpoint")
    parser.add_argument("--lm-head", default="8", choices=["fp", "8", "4", "ckpt"],
                        help="edgeq: the exporter's head width, or ckpt: the checkpoint's own calibrated head")
    parser.add_argument("--slice", metavar="BITS", help="edgeq: export this width of a nested (matquant) checkpoint, "
                        "or a Mix'n'Match average such as 3.0 (`edgeq export --bits`)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="write docs/results/front.md and the PNG")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.tool in ("llamacpp", "gguf") and importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed (see benchmarks/vs_llamacpp.py for the build): no llama.cpp rows")
        return 0
    for i, item in enumerate(args.items):
        label = args.label[i] if i < len(args.label) else f"edgeq {Path(item).name}"
        if args.tool == "edgeq":
            row = edgeq_point(Path(item), label, args.lm_head, args.slice)
        elif args.tool == "gguf":
            row = edgeq_gguf_point(Path(item), label, args.threads)
        elif args.tool == "builder":
            row = builder_point(item)
        else:
            row = llamacpp_point(item, args.threads)
        append_result(RESULTS, {**row, **stamp()})
        print(json.dumps({k: row[k] for k in ("label", "tensor_bytes", "perplexity")}), flush=True)
    if args.table:
        write_docs()
    return 0


if __name__ == "__main__":
    sys.exit(main())

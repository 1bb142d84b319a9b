"""edgeq against onnxruntime-genai's own model builder, on the same weights: perplexity (the method table's
standard protocol: 40 x 512 windows of Persuasion and of news prose, through onnxruntime), the folder's
size, and decode time through genai's generator and through edgeq's loop, all folders in one
interleaved bench per engine.

    python benchmarks/vs_genai_builder.py            # build and measure what is not yet in the results file
    python benchmarks/vs_genai_builder.py --bench    # then the bench of every folder (both engines)
    python benchmarks/vs_genai_builder.py --table    # the markdown table from the results file
    python benchmarks/generated_docs.py            # the table into docs/results/runtimes.md

The builder makes round-to-nearest int4 only (no calibration), symmetric, block 32 by default, with the
tied head and embedding at 4 bits; it reads a float Hugging Face folder (edgeq's float cache of the
bundled GGUF, with the `architectures` field it needs added) and needs onnx-ir. edgeq's checkpoints are
the method table's own (same calibration, same folder under runs/quality), so rows agree with that table.

CAVEAT (as in quality.py): the bundled weights were stored as GGUF Q4_1 in blocks of 32, so asymmetric
4-bit codes in groups of 32 are nearly lossless by construction; the g32 row says what block 32 costs in
bytes and time, its quality flatters it. Results: benchmarks/results/vs_genai_builder.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import quality  # noqa: E402  (the method table's runner: protocol, checkpoints, eval, results file)

RESULTS = quality.ROOT / "benchmarks" / "results" / "vs_genai_builder.jsonl"
PROTOCOL = quality.PROTOCOLS["standard"]


@dataclass(frozen=True)
class Entry:
    name: str
    builder_options: tuple[str, ...] | None = None  # a builder folder: its --extra_options
    row: quality.Row | None = None                  # an edgeq folder: the method table's checkpoint ...
    export_flags: tuple[str, ...] = ()              # ... exported with these flags

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name).strip("-")


ENTRIES = [
    Entry("builder int4 (block 32, symmetric, 4-bit tied head)", builder_options=()),
    Entry("builder int4 block 128", builder_options=("block_size=128",)),
    Entry("edgeq rtn W4 g128 --lm-head 8", row=quality.Row("rtn", 4, "128"), export_flags=("--lm-head", "8")),
    Entry("edgeq gptq W4 g128 --lm-head 8", row=quality.Row("gptq", 4, "128"), export_flags=("--lm-head", "8")),
    Entry("edgeq gptq W4 g32 --lm-head 8", row=quality.Row("gptq", 4, "32"), export_flags=("--lm-head", "8")),
    # the 4-bit tied head and embedding, as the builder stores them: the same size class as its folder
    Entry("edgeq rtn W4 g128 --lm-head 4", row=quality.Row("rtn", 4, "128"), export_flags=("--lm-head", "4")),
    Entry("edgeq gptq W4 g128 --lm-head 4", row=quality.Row("gptq", 4, "128"), export_flags=("--lm-head", "4")),
]


def float_hf_folder(work: Path) -> Path:
    """edgeq's float cache of the bundled model as a folder the builder reads: links to its files and a
    config.json with `architectures` (the builder picks its model class from it)."""
    from edgeq.io import models
    source = models.float_folder(models.bundled_source())
    folder = work / "hf-float"
    folder.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.name != "config.json" and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())
    config = json.loads((source / "config.json").read_text())
    config.setdefault("architectures", ["LlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def build(entry: Entry, work: Path) -> tuple[Path, float | None]:
    """(folder, seconds to make it from the float model: builder run, or quantize + export; None for a
    builder folder made by an earlier run)."""
    out = work / entry.slug
    started = time.time()
    if entry.builder_options is not None:
        if (out / "genai_config.json").is_file():
            return out, None
        extra = ["--extra_options", *entry.builder_options] if entry.builder_options else []
        done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
                               str(float_hf_folder(work)), "-o", str(out), "-p", "int4", "-e", "cpu", *extra],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"genai builder failed:\n{done.stderr[-2000:]}")
        return out, time.time() - started
    ckpt = quality.checkpoint_dir(quality.ROOT / "runs" / "quality", entry.row, PROTOCOL)
    if not (ckpt / "quantization.json").is_file():
        quality.edgeq("quantize", *entry.row.quantize_args(PROTOCOL), "--out", ckpt, "--quiet")
    if not (out / "export.json").is_file():
        quality.edgeq("export", ckpt, "--out", out, *entry.export_flags)
    stats = json.loads((ckpt / "quantization.json").read_text())["stats"]
    export_s = json.loads((out / "export.json").read_text())["seconds"]
    return out, quality.quantize_seconds(stats) + export_s


def folder_mb(folder: Path) -> dict:
    files = {f.name: f.stat().st_size for f in folder.iterdir() if f.is_file()}
    model = sum(size for name, size in files.items() if name.startswith("model.onnx"))
    return {"model_mb": round(model / 2 ** 20, 2), "folder_mb": round(sum(files.values()) / 2 ** 20, 2)}


def base_record(phase: str) -> dict:
    return {"phase": phase, "protocol": PROTOCOL.name, "commit": harness.git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": harness.machine(),
            "load_1min": round(os.getloadavg()[0], 2)}


def measure_quality(entry: Entry, work: Path, fp: dict) -> dict:
    folder, make_s = build(entry, work)
    record = {**base_record("quality"), "entry": entry.name, "folder": str(folder),
              "make_seconds": round(make_s, 1) if make_s is not None else None,
              **folder_mb(folder), "eval": quality.evaluate(folder, PROTOCOL, work, [])}
    for label, result in record["eval"].items():
        result["over_fp"] = round(result["perplexity"] / fp["eval"][label]["perplexity"], 4)
    return record


def measure_speed(folders: list[Path], engine: str, work: Path, runs: int) -> dict:
    """One interleaved bench of every folder on one engine, 2 threads, 128-token prompt, 64 tokens."""
    path = work / f"bench-{engine}.json"
    quality.edgeq("bench", *folders, "--engine", engine, "--threads", 2, "--prompt", 128, "--gen", 64,
                  "--runs", runs, "--warmup", 2, "--json", path, "--quiet")
    report = json.loads(path.read_text())
    return {**base_record("bench"), "engine": engine, "runs": runs,
            "models": {m["model"]: {"decode_p50_ms": round(m["decode_ms_per_token"]["p50"], 3),
                                    "prefill_p50_ms": round(m["prefill_ms"]["p50"], 2)} for m in report["models"]}}


def render(records: list[dict]) -> str:
    quality_rows = {r["entry"]: r for r in records if r["phase"] == "quality"}
    speed = {r["engine"]: r["models"] for r in records if r["phase"] == "bench"}
    labels = [label for label, _ in PROTOCOL.texts]
    lines = ["| folder | " + " | ".join(f"{t} ppl (x fp32)" for t in labels) +
             " | model MB | decode ms/token genai | decode ms/token edgeq loop | made in s |",
             "|" + "---|" * (5 + len(labels))]
    for entry in ENTRIES:
        r = quality_rows.get(entry.name)
        if r is None:
            continue
        cells = [f"{r['eval'][t]['perplexity']:.2f} ({r['eval'][t]['over_fp']:.3f})" for t in labels]
        ms = [speed.get(engine, {}).get(r["folder"], {}).get("decode_p50_ms") for engine in ("genai", "ort")]
        made = f"{r['make_seconds']:.0f}" if r["make_seconds"] else "-"  # - : folder reused, not timed
        cells += [f"{r['model_mb']:.1f}", *(f"{m:.2f}" if m else "-" for m in ms), made]
        lines.append(f"| {entry.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", action="store_true", help="after the quality rows, bench every folder")
    parser.add_argument("--runs", type=int, default=10, help="bench runs per folder and engine (default: 10)")
    parser.add_argument("--again", action="store_true", help="measure entries already in the results file")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--work", type=Path, default=quality.ROOT / "runs" / "vs_genai_builder")
    args = parser.parse_args(argv)
    records = quality.read_results(RESULTS)
    if args.table:
        return print(render(records))
    fp = quality.latest(quality.read_results(quality.RESULTS), PROTOCOL.name).get("fp32")
    if fp is None:
        raise SystemExit("no fp32 row of the standard protocol yet: python benchmarks/quality.py --only fp32")
    args.work.mkdir(parents=True, exist_ok=True)
    done = {r["entry"] for r in records if r["phase"] == "quality"}
    for entry in ENTRIES:
        if entry.name in done and not args.again:
            continue
        print(f"entry: {entry.name} ...", file=sys.stderr, flush=True)
        harness.append_result(RESULTS, measure_quality(entry, args.work, fp))
    if args.bench:
        folders = [Path(r["folder"]) for r in quality.read_results(RESULTS) if r["phase"] == "quality"]
        for engine in ("genai", "ort"):
            print(f"bench: {engine} ...", file=sys.stderr, flush=True)
            harness.append_result(RESULTS, measure_speed(sorted(set(folders)), engine, args.work, args.runs))
    print(render(quality.read_results(RESULTS)))


if __name__ == "__main__":
    main()

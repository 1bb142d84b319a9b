"""Every generated block of README.md and docs/, and the one command that rewrites them.

    python benchmarks/generated_docs.py            # rewrite every block from benchmarks/results and the registry
    python benchmarks/generated_docs.py --check    # list stale blocks, exit 1 if any (tests/test_docs.py)

A block sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` in a markdown file. NAME picks its
renderer: a results table (from benchmarks/results, with its protocol and the command that measured it), or a
table read from the method records (each method's options, defaults and flags). Nothing between markers is
typed by hand; a measured table outside them is a defect to fix here."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the method table's protocols, rows and renderer)
import quality_targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w.:@-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)
MAIN_PROTOCOL = "standard-512x128"

# What the README recommends, goal by goal: (goal, row label of the method table). The figures are the rows'.
RECOMMENDED = [
    ("4 bits, fast (the default)", "gptq W4 g128"),
    ("4 bits, best quality", "gptq W4 g128 --correct-upstream 0.25 --e2e-epochs 1"),
    ("4 bits, one scale per row", "flexround W4 per-channel"),
    ("3 bits", "flexround W3 g128"),
    ("2 bits, fast", "cdquant W2 g64"),
    ("2 bits, best quality", "gptq W2 g64 --correct-upstream 0.25 --e2e-epochs 1"),
    ("one int8 file, sliced on the device to 4 bits", "matquant W8 g64 @4"),
    ("a size budget (3.5 code bits)", "gptq mixed 3.5 bits --budget 3.5"),
]


def records(protocol: str = MAIN_PROTOCOL) -> dict[str, dict]:
    return quality.latest(quality.read_results(quality.RESULTS), protocol)


def ratio(row: dict, fp: dict, text: str) -> str:
    ppl = row["eval"][text]["perplexity"]
    return f"{ppl:.2f} ({ppl / fp['eval'][text]['perplexity']:.3f} x)"


def recommended() -> str:
    rows, protocol = records(), quality.PROTOCOLS[MAIN_PROTOCOL]
    fp, texts = rows["fp32"], [label for label, _ in protocol.texts]
    lines = ["| goal | command | " + " | ".join(f"{t} ppl (x fp32)" for t in texts) + " | quantize min (2 cores) |",
             "|---|---|" + "---|" * len(texts) + "---|"]
    for goal, label in RECOMMENDED:
        r = rows[label]
        lines.append(f"| {goal} | `{quantize_line(r)}` | " + " | ".join(ratio(r, fp, t) for t in texts) +
                     f" | {r['quantize_seconds'] / 60:.0f} |")
    return (f"SmolLM2-135M, protocol `{MAIN_PROTOCOL}` ([docs/results/quality.md](docs/results/quality.md)); "
            "fp32: " + " / ".join(f"{fp['eval'][t]['perplexity']:.2f}" for t in texts) + ".\n\n" + "\n".join(lines))


def quantize_line(row: dict) -> str:
    """The row's quantize flags as a user types them (the protocol's calibration flags are the defaults)."""
    grid = [] if row["spec"].startswith("mixed") else ["--bits", str(row["bits"])] + (
        ["--group-size", str(row["group"])] if str(row["group"]) != "128" else [])
    method = [] if row["method"] == "gptq" else ["--method", row["method"]]
    sliced = f"  (then --bits {row['slice_bits']:g} at eval/export)" if row.get("slice_bits") else ""
    return " ".join(["edgeq quantize", *method, *grid, *row["flags"], "--out q"]) + sliced


def method_options(name: str) -> str:
    """A method's options: flag, default and meaning, read from its record (the same fields the CLI builds from)."""
    from edgeq.solvers import get_method
    from edgeq.solvers.options import flag_of
    method = get_method(name)
    lines = ["| option | flag | default | what it sets |", "|---|---|---|---|"]
    for field in dataclasses.fields(method.options):
        flag = flag_of(field)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else f"{default:g}" \
            if isinstance(default, float) else str(default)
        lines.append(f"| `{field.name}` | {f'`{flag.flag}`' if flag else 'API only'} | {shown} | "
                     f"{flag.help if flag else '-'} |")
    kind = "trained on each block's output" if method.learned else "solved one linear at a time"
    facts = [kind, "needs calibration text" if method.calibrated else "no calibration text",
             "nested int8 codes, sliceable" if method.nested else None]
    return f"`{name}` ({', '.join(f for f in facts if f)}): {method.summary}.\n\n" + "\n".join(lines)


def method_rows(name: str) -> str:
    """The method's rows of the method table (and the fp32 row they are ratios to)."""
    all_records = quality.read_results(quality.RESULTS)
    kept = [r for r in all_records if r["method"] in ("fp32", name)]
    table = quality.render_table(kept, quality.PROTOCOLS[MAIN_PROTOCOL])
    return table.split("\n\n", 1)[1] + f"\n\nRows of protocol `{MAIN_PROTOCOL}` (docs/results/quality.md has all)."


def methods_summary() -> str:
    from edgeq.solvers import get_method, method_names
    lines = ["| method | kind | what it does |", "|---|---|---|"]
    for name in method_names():
        m = get_method(name)
        lines.append(f"| [`{name}`](docs/methods.md#{name}) | {m.kind} | {m.summary} |")
    return "\n".join(lines)


def head_widths() -> str:
    rows = [json.loads(line) for line in (RESULTS / "head_widths.jsonl").read_text().splitlines() if line.strip()]
    fp = records("standard").get("fp32")
    lines = ["| head | checkpoint | Persuasion | news | folder MB |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [ratio(r, fp, t) if fp else f"{r['eval'][t]['perplexity']:.2f}" for t in ("persuasion", "news")]
        lines.append(f"| {r['label']} | {r['checkpoint']} | " + " | ".join(cells) + f" | {r['folder_mb']:.1f} |")
    commit = sorted({r["commit"] for r in rows})
    return ("`python benchmarks/head_widths.py` (protocol `standard`: 128 x 512 calibration; 40 x 512 windows "
            f"through onnxruntime; commit {', '.join(commit)}; benchmarks/results/head_widths.jsonl).\n\n" +
            "\n".join(lines))


def vs_llamacpp() -> str:
    runs = {threads: json.loads((RESULTS / f"vs_llamacpp_t{threads}.json").read_text()) for threads in (2, 1)}
    names = [m["name"] for m in runs[2]["models"]]
    by = {t: {m["name"]: m for m in run["models"]} for t, run in runs.items()}
    lines = ["| model | decode p50 ms, 2 threads | 1 thread | prefill p50 ms, 2 threads | 1 thread | file MB |",
             "|---|---|---|---|---|---|"]
    for name in names:
        two, one = by[2][name], by[1].get(name)
        cells = [f"{two['decode_ms_per_token']['p50']:.2f}", f"{one['decode_ms_per_token']['p50']:.2f}" if one else "-",
                 f"{two['prefill_ms']['p50']:.0f}", f"{one['prefill_ms']['p50']:.0f}" if one else "-",
                 f"{two['file_mb']:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    s = runs[2]["settings"]
    return (f"`python benchmarks/vs_llamacpp.py W4 W4-HEAD8 W4-HEAD4 FP32 --threads 2|1 --runs {s['runs']}` "
            f"({s['prompt']}-token prompt then {s['gen']} tokens, one interleaved run per thread count; "
            f"{runs[2]['machine'].get('cpu', '?')}; benchmarks/results/vs_llamacpp_t2.json, _t1.json).\n\n"
            + "\n".join(lines))


def scale(model_key: str) -> str:
    """Every run of every phase of one model end to end, in the order measured (benchmarks/scale.py)."""
    rows = [json.loads(line) for line in (RESULTS / "scale.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if model_key in r["model"]]
    lines = ["| phase | result | commit | wall s | peak RSS MB |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phase']} | {phase_result(r)} | {r['commit']} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |")
    return (f"`python benchmarks/scale.py {Path(rows[0]['model']).name}` (each phase its own process, 2 cores; "
            "benchmarks/results/scale.jsonl, every run in the order measured).\n\n" + "\n".join(lines))


def phase_result(r: dict) -> str:
    if "perplexity" in r:
        return " / ".join(f"{t} {p:.2f}" for t, p in sorted(r["perplexity"].items(), reverse=True))
    if "folder_mb" in r:
        return f"{r['folder_mb']:.0f} MB folder"
    if "stats" in r:
        s = r["stats"]
        cap = f", inside a {r['memory_cap']} memory cap" if r.get("memory_cap") else ""
        return (f"forward {s['seconds_forward']:.0f} s, Hessians {s['seconds_hessian']:.0f} s, solver "
                f"{s['seconds_solver']:.0f} s; peak RSS {r['peak_rss_mb'] / s['fp32_parameter_mb']:.3f} x the fp32 "
                f"parameters{cap}")
    if "bench" in r:
        return "; ".join(f"{m['name']} decode {m['decode_ms_per_token']['p50']:.1f} ms/token, prefill "
                         f"{m['prefill_ms']['p50']:.0f} ms" for m in r["bench"]) or "-"
    return "-"


# The compute-dtype check of docs/calibration.md: GPTQ at W4 g128 and W2 g64, float32 against bfloat16
# calibration products, on the method table's protocol, in a results file of their own.
CALIB_DTYPE_ROWS = [f"gptq {bits} {group} --calib-dtype {dtype}" for bits, group in ((4, 128), (2, 64))
                    for dtype in ("float32", "bfloat16")]
CALIB_DTYPE_RESULTS = RESULTS / "calib_dtype.jsonl"


def calib_dtype() -> str:
    rows = " ".join(f'--row "{row}"' for row in CALIB_DTYPE_ROWS)
    command = f"python benchmarks/quality.py --results {CALIB_DTYPE_RESULTS.relative_to(ROOT)} {rows}"
    return quality.render_table(quality.read_results(CALIB_DTYPE_RESULTS), quality.PROTOCOLS[MAIN_PROTOCOL],
                                source=CALIB_DTYPE_RESULTS, command=command)


def quantize_speed() -> str:
    """Every run of benchmarks/quantize_speed.py, each phase beside its floor at the run's own GEMM rates."""
    rows = [json.loads(line) for line in (RESULTS / "quantize_speed.jsonl").read_text().splitlines() if line.strip()]
    lines = ["| model (blocks) | windows, --batch-size | device, threads | products | forward s (floor) | Hessians s (floor) "
             "| forward + Hessians / fp32 floor | solver s | wall s | GEMM GFLOP/s | commit |", "|---" * 11 + "|"]
    for r in rows:
        s, f = r["seconds"], r["floor_seconds"]
        rate = r["gflops_measured"][r["calib_dtype"]]["forward"]
        fp32_floor = f["forward_fp32"] + f["hessian_fp32"]
        lines.append(f"| {Path(r['config']).stem} ({r['layers']}) | {r['samples']} x {r['seq_len']}, {r['batch_size']} "
                     f"| {r['device']}, {r['threads']} | {r['calib_dtype']} | {s['forward']:.1f} ({f['forward']:.1f}) "
                     f"| {s['hessian']:.1f} ({f['hessian']:.1f}) | {(s['forward'] + s['hessian']) / fp32_floor:.2f} "
                     f"| {s['solver']:.1f} | {s['wall']:.1f} | {rate:.0f} | {r['commit']} |")
    machines = sorted({f"{r['machine'].get('cpu', '?')} ({r['machine'].get('cores', '?')} cores)" for r in rows})
    return ("`python benchmarks/quantize_speed.py --layers 6 --calib-dtype float32|bfloat16` (random-init model of the "
            f"config's shape, random calibration ids; {', '.join(machines)}; benchmarks/results/quantize_speed.jsonl, "
            "every run in the order measured). Floors: the phase's FLOPs as they ran over the GEMM rate measured in "
            "the same run, in the run's dtype; the fp32 floor is the same work at the fp32 rate.\n\n" + "\n".join(lines))


def benchmarks_index() -> str:
    """Every script under benchmarks/ with the first line of its docstring."""
    import ast
    lines = ["| script | what it measures |", "|---|---|"]
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or "-"
        lines.append(f"| `{path.relative_to(ROOT / 'benchmarks')}` | {doc.split(chr(10) + chr(10))[0].replace(chr(10), ' ')} |")
    return "\n".join(lines)


def aarch64() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks" / "aarch64"))
    import compare
    return compare.table(compare.RESULTS)


def vs_genai_builder() -> str:
    import vs_genai_builder as vs
    return vs.render(quality.read_results(vs.RESULTS))


def front() -> str:
    import front as front_script
    return front_script.table()


def gptqmodel_interop() -> str:
    import gptqmodel_interop as interop
    return interop.table()


def autoround_tuned() -> str:
    import autoround_tuned as tuned
    return tuned.render_table()


def render(name: str) -> str:
    kind, _, arg = name.partition(":")
    if kind == "quality":
        return quality.render_table(quality.read_results(quality.RESULTS), quality.PROTOCOLS[arg])
    if kind == "targets":
        return quality_targets.render_targets(quality.read_results(quality.RESULTS), quality.PROTOCOLS[arg])
    renderers = {"recommended": recommended, "methods-summary": methods_summary, "head-widths": head_widths,
                 "vs-llamacpp": vs_llamacpp, "aarch64": aarch64, "vs-genai-builder": vs_genai_builder,
                 "method-options": lambda: method_options(arg), "method-rows": lambda: method_rows(arg),
                 "scale": lambda: scale(arg), "benchmarks-index": benchmarks_index,
                 "calib-dtype": calib_dtype, "quantize-speed": quantize_speed, "front": front,
                 "gptqmodel-interop": gptqmodel_interop, "autoround-tuned": autoround_tuned}
    if kind not in renderers:
        raise SystemExit(f"unknown generated block {name!r}")
    return renderers[kind]()


def refreshed(document: str) -> str:
    return BLOCK.sub(lambda m: f"{m.group(1)}{render(m.group('name')).rstrip()}\n{m.group(4)}", document)


def stale(paths=DOCUMENTS) -> list[str]:
    """'file: block' for every block whose text is not what its renderer gives now."""
    out = []
    for path in paths:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if m.group("body") != render(m.group("name")).rstrip() + "\n":
                out.append(f"{path.relative_to(ROOT)}: {m.group('name')}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="list stale blocks and exit 1 if any; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        found = stale()
        print("\n".join(found) or "every generated block is fresh")
        return 1 if found else 0
    for path in DOCUMENTS:
        text = path.read_text()
        new = refreshed(text)
        if new != text:
            path.write_text(new)
            print(f"{path.relative_to(ROOT)}: updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())

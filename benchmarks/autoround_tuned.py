"""auto-round's tuned rounding (SignRound, iters > 0) of the bundled model, read and exported by edgeq, beside
edgeq's own methods at the same spec on the method table's protocol (issue 46's quality comparison).

    python benchmarks/autoround_tuned.py run --iters 200              # auto-round W4 g64 sym, then score it: one row
    python benchmarks/autoround_tuned.py run --iters 50 --lr 5e-3     # auto-round's "light" recipe
    python benchmarks/autoround_tuned.py --table                      # the markdown table (generated into docs/export.md)

What a row is:
- the producer: auto-round 0.16.1 on the CPU, calibrated on the very token windows of the method table's
  protocol (`standard-512x128`: edgeq's default calibration, 512 x 128 windows of the packaged Pride and
  Prejudice, seed 0), handed to it as input ids, batch 8; saved in its auto_gptq format (the format the genai
  builder, transformers and vLLM read; auto-round's own format did not load back here). Group 64 because
  auto-round packs only groups that divide K (576 for this model), symmetric because that is its default.
- the reader: `edgeq eval FOLDER` (torch, the method table's 40 x 512 windows of Persuasion and news) and
  `edgeq export FOLDER --lm-head 8` scored in onnxruntime (the front's point), both divided by the fp32 row of
  benchmarks/results/quality.jsonl.
The edgeq side of the table is the method table's own rows at the same spec (benchmarks/quality.py), so both
columns are one protocol: the same calibration windows, the same held-out windows.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import quality
from front import edgeq_perplexities, onnx_tensor_bytes
from harness import RESULTS_DIR, ROOT, append_result, edgeq_cli, read_results, stamp

RESULTS = RESULTS_DIR / "autoround_tuned.jsonl"
WORK = ROOT / "runs" / "autoround_tuned"
PROTOCOL = quality.PROTOCOLS["standard-512x128"]
SAMPLES, SEQ_LEN, SEED, BATCH = 512, 128, 0, 8  # PROTOCOL's calibration flags, as numbers
EDGEQ_ROWS = ("rtn W4 g64 --sym", "gptq W4 g64 --sym", "gptq W4 g64", "signround W4 g64 --sym")


def calibration_batches() -> list:
    """The protocol's calibration windows, in auto-round's batches (input ids, [BATCH, SEQ_LEN])."""
    from edgeq.calib.data import calibration_set
    from edgeq.io import models
    assert PROTOCOL.calib_flags[:6] == ("--samples", str(SAMPLES), "--seq-len", str(SEQ_LEN), "--seed", str(SEED))
    windows, _ = calibration_set(models.load_tokenizer(models.bundled_source()), samples=SAMPLES, seq_len=SEQ_LEN,
                                 seed=SEED)
    return list(windows.split(BATCH))


def produce(out: Path, bits: int, group: int, sym: bool, iters: int, lr: float | None) -> float:
    """auto-round on the bundled float weights, saved as auto_gptq under `out`; the seconds it took."""
    import auto_round
    from edgeq.io import models
    source = models.bundled_source()
    start = time.perf_counter()
    ar = auto_round.AutoRound(str(models.float_folder(source)), scheme="W4A16", bits=bits, group_size=group, sym=sym,
                              iters=iters, lr=lr, nsamples=SAMPLES, seqlen=SEQ_LEN, batch_size=BATCH,
                              dataset=calibration_batches(), device_map="cpu", amp=False, seed=SEED)
    ar.quantize()
    ar.save_quantized(str(out), format="auto_gptq")
    return time.perf_counter() - start


def run(args) -> None:
    import auto_round
    name = f"ar-w{args.bits}-g{args.group}-{'sym' if args.sym else 'asym'}-iters{args.iters}-lr{args.lr or 'auto'}"
    folder, onnx = WORK / name, WORK / f"{name}-onnx"
    seconds = None
    if not (folder / "config.json").is_file():
        seconds = produce(folder, args.bits, args.group, args.sym, args.iters, args.lr)
    torch_ppl = edgeq_perplexities(folder, WORK / f"{name}.torch.json")
    if not (onnx / "model.onnx").is_file():
        edgeq_cli("export", folder, "--out", onnx, "--lm-head", "8")
    append_result(RESULTS, {
        **stamp(), "tool": "auto-round", "auto_round": auto_round.__version__, "label": label_of(args),
        "bits": args.bits, "group": args.group, "sym": args.sym, "iters": args.iters, "lr": args.lr,
        "protocol": PROTOCOL.name, "quantize_seconds": seconds, "perplexity": torch_ppl,
        "onnx_perplexity": edgeq_perplexities(onnx, WORK / f"{name}.onnx.json"),
        "onnx_tensor_bytes": onnx_tensor_bytes(onnx)})


def label_of(args) -> str:
    lr = f" lr {args.lr:g}" if args.lr else ""
    return f"auto-round W{args.bits} g{args.group}{'' if args.sym else ' asym'} iters {args.iters}{lr}"


def render_table() -> str:
    table = {r["label"]: r for r in read_results(quality.RESULTS) if r.get("protocol") == PROTOCOL.name}
    over = {text: table["fp32"]["eval"][text]["perplexity"] for text in ("persuasion", "news")}
    lines = ["| producer, spec | quantize s (2 cores) | Persuasion x fp32 | news x fp32 | its ONNX export (lm-head 8): "
             "Persuasion / news |", "|---|---|---|---|---|"]
    for r in {r["label"]: r for r in read_results(RESULTS)}.values():
        onnx = r["onnx_perplexity"]
        lines.append(f"| {r['label']} (read by edgeq) | {r['quantize_seconds'] or 0:.0f} | "
                     f"{r['perplexity']['persuasion'] / over['persuasion']:.4f} | "
                     f"{r['perplexity']['news'] / over['news']:.4f} | "
                     f"{onnx['persuasion'] / over['persuasion']:.4f} / {onnx['news'] / over['news']:.4f} |")
    for label in EDGEQ_ROWS:
        if label in table:
            r = table[label]
            lines.append(f"| edgeq {label} (method table) | {r.get('quantize_seconds') or 0:.0f} | "
                         f"{r['eval']['persuasion']['over_fp']:.4f} | {r['eval']['news']['over_fp']:.4f} | - |")
    return "\n".join(lines) + ("\n\nProtocol standard-512x128 (the method table's: its calibration windows for both tools, "
                              "40 x 512 held-out windows); `python benchmarks/autoround_tuned.py run --iters N [--lr LR]`, "
                              "the edgeq rows from `python benchmarks/quality.py`.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", choices=["run"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--asym", dest="sym", action="store_false")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--lr", type=float, default=None, help="auto-round's default: 1 / iters")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        print(render_table())
    elif args.step == "run":
        run(args)
    else:
        parser.error("give a step (run) or --table")


if __name__ == "__main__":
    main()

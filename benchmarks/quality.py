"""The method table: every solver on one protocol, row by row, each row kept as one JSON line.

    python benchmarks/quality.py                      # run the standard rows not yet in the results file
    python benchmarks/quality.py --only gptq "W3 g128" # only rows whose label contains every text given
    python benchmarks/quality.py --row "gptq 4 128 --damp 0.1"  # an extra row (method bits group flags...)
    python benchmarks/quality.py --table              # the markdown table from the results file
    python benchmarks/generated_docs.py               # write it (and every generated table) into the docs
    python benchmarks/quality.py --list               # the rows and whether each is done

A row is one (method, bits, group, quantize flags, evaluated slice). Each runs `edgeq quantize` and
`edgeq eval` as processes of their own, as a user would, and is appended to benchmarks/results/quality.jsonl
the moment it is done (commit, protocol, perplexities, quantize seconds, peak RSS, machine, load), so an
interrupted run loses at most the row in flight. A row already in the file for the same protocol is
skipped unless --again. Quality does not depend on machine load; quantize seconds do (each row records
the 1-minute load average when it started).

CAVEAT: the bundled weights were stored as GGUF Q4_1 (blocks of 32), so asymmetric 4-bit with group 32 is
nearly lossless by construction; rows use group 64/128, per-channel, 3 and 2 bits.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgeq.util.argtypes import parse_slice

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402,F401  (the rows' stamp and file format; names other scripts import from here)
    append_result, git_commit, machine, news_path, news_text, read_results)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality.jsonl"


@dataclass(frozen=True)
class Protocol:
    """What every row of one table shares: calibration and the held-out windows. Fixed once named:
    a change of calibration or of evaluation texts is a new protocol, never mixed with old rows."""
    name: str
    calib_flags: tuple[str, ...]           # edgeq quantize flags that choose the calibration data
    texts: tuple[tuple[str, str], ...]     # (label, file or builtin:NAME), as edgeq eval --text takes them
    windows: int = 40
    seq_len: int = 512


# Every protocol's rows were measured with a float32 calibration forward, before --calib-dtype's auto default
# (bf16 where the CPU has it) existed: pinned, so that one protocol means one calibration on every machine.
FP32_CALIB = ("--calib-dtype", "float32")
PROTOCOLS = {p.name: p for p in [
    # edgeq's default calibration since the calibration grid: 512 x 128 windows of the default text, seed 0;
    # the same held-out texts. The method table is re-run on it; `standard` keeps the 128 x 512 rows.
    Protocol("standard-512x128", ("--samples", "512", "--seq-len", "128", "--seed", "0", *FP32_CALIB),
             (("persuasion", "builtin:persuasion"), ("news", str(news_path())))),
    # 128 x 512 windows of edgeq's default calibration text (the packaged Pride and Prejudice), seed 0;
    # held out: Persuasion (same author) and news prose (another kind of text).
    Protocol("standard", ("--samples", "128", "--seq-len", "512", "--seed", "0", *FP32_CALIB),
             (("persuasion", "builtin:persuasion"), ("news", str(news_path())))),
    # The same windows, for the calibration issue's grid (rows vary the calibration with their flags),
    # kept apart so that the grid's rows never mix into the method table.
    Protocol("calib-grid", ("--samples", "128", "--seq-len", "512", "--seed", "0", *FP32_CALIB),
             (("persuasion", "builtin:persuasion"), ("news", str(news_path())))),
]}


@dataclass(frozen=True)
class Row:
    method: str                      # an edgeq method, or "fp32" (the reference row)
    bits: int = 4
    group: str = "128"               # a group size or "channel"
    flags: tuple[str, ...] = ()      # more edgeq quantize flags
    slice_bits: int | float | None = None  # evaluate this slice of the codes (edgeq eval --bits; 3.5: Mix'n'Match)

    @property
    def mixed(self) -> bool:
        return "--budget" in self.flags

    @property
    def spec(self) -> str:
        if self.method == "fp32":
            return "fp32"
        if self.mixed:
            return f"mixed {self.flags[self.flags.index('--budget') + 1]} bits"
        spec = f"W{self.bits} " + ("per-channel" if self.group == "channel" else f"g{self.group}")
        return spec + (f" @{self.slice_bits}" if self.slice_bits else "")

    @property
    def label(self) -> str:
        return "fp32" if self.method == "fp32" else " ".join([self.method, self.spec, *self.flags])

    def key(self, protocol: str) -> dict:
        return {"protocol": protocol, "method": self.method, "bits": self.bits, "group": self.group,
                "flags": list(self.flags), "slice_bits": self.slice_bits}

    def quantize_args(self, protocol: Protocol) -> list[str]:
        grid = [] if self.mixed else ["--bits", str(self.bits), "--group-size", self.group]  # --budget picks
        return ["--method", self.method, *grid, *protocol.calib_flags, *self.flags]

    @classmethod
    def parse(cls, text: str) -> "Row":
        """'METHOD BITS GROUP [flags...] [@SLICE]', e.g. 'gptq 3 128 --damp 0.1' or 'matquant 8 64 @4'."""
        words = shlex.split(text)
        if len(words) < 3 and words[:1] != ["fp32"]:
            raise SystemExit(f"--row needs METHOD BITS GROUP [flags...] [@SLICE], got {text!r}")
        if words[0] == "fp32":
            return cls("fp32")
        slices = [w for w in words[3:] if w.startswith("@")]
        flags = tuple(w for w in words[3:] if not w.startswith("@"))
        return cls(words[0], int(words[1]), words[2], flags, parse_slice(slices[0][1:]) if slices else None)


def standard_rows() -> list[Row]:
    """The rows of the standard table (method defaults unless named)."""
    specs = [(4, "128"), (3, "128"), (2, "64"), (4, "channel")]
    rows = [Row("fp32")]
    for method, flags in [("rtn", ()), ("gptq", ()), ("cdquant", ()), ("decoupleq", ()),
                          ("decoupleq", ("--block-epochs", "2")),
                          ("signround", ()), ("flexround", ()), ("lrq", ())]:
        rows += [Row(method, bits, group, flags) for bits, group in specs]
    rows.append(Row("gptq", 2, "64", ("--block-epochs", "2")))
    rows.append(Row("flexround", 3, "128", ("--rounding-rule", "addition")))  # division vs addition
    # the block loss: the learned methods' default is each token's relative error, the other one is MSE
    # (which the attention sink dominates); --block-epochs' default is MSE (solvers.method.DEFAULT_BLOCK_LOSS)
    rows += [Row(m, 3, "128", ("--block-loss", "mse")) for m in ("flexround", "lrq", "signround")]
    rows.append(Row("flexround", 4, "channel", ("--block-loss", "mse")))
    rows.append(Row("gptq", 2, "64", ("--block-epochs", "2", "--block-loss", "relative")))
    for method in ("matquant", "matround"):
        rows += [Row(method, 8, "64", (), b) for b in (8, 4, 2)]
        rows += [Row(method, 8, "64", (), b) for b in (3.0, 4.0, 5.0, 6.0)]  # Mix'n'Match from the same file
    rows += [Row("gptq", 8, "64", ("--sym",), b) for b in (4, 2)]  # the naive slice of plain int8 codes
    rows += [Row("gptq", b, "64", ("--sym",)) for b in (8, 4, 2)]  # each width trained alone
    rows.append(Row("gptq", 4, "64"))  # asymmetric, as the nested methods' default grid (W2 g64 is above)
    rows += [Row("gptq", 4, "128", ("--budget", b)) for b in ("2.5", "3.0", "3.5")]
    # the default candidates have no 3-bit grid (onnxruntime stores 3-bit in a 4-bit container), so 3.0 bits
    # is a 2/4 mix; with a 3-bit candidate the knapsack can keep uniform W3 g128 when that is best
    rows.append(Row("gptq", 4, "128", ("--budget", "3.0", "--candidates", "2:64,3:128,4:128,8:128")))
    # W2 g64 with hand-kept 4-bit layers of the same code size as --budget 3.0: attention and down_proj are
    # half of SmolLM2-135M's linear weights (0.88M + 0.88M of 3.54M per block), the usual picks
    rows.append(Row("gptq", 2, "64", ("--layer-grid", "self_attn=4:128", "--layer-grid", "down_proj=4:128")))
    return rows


# ---- the results file ----

def row_key(record: dict) -> dict:
    key = {k: record[k] for k in ("protocol", "method", "bits", "group", "flags", "slice_bits")}
    return {**key, "slice_type": type(key["slice_bits"]).__name__}  # a width (4) is not an average (4.0)


def is_done(records: list[dict], row: Row, protocol: str) -> bool:
    return any(row_key(r) == row_key(row.key(protocol)) for r in records)


def latest(records: list[dict], protocol: str) -> dict[str, dict]:
    """The last record of every row of a protocol, by label (a rerun with --again replaces the older)."""
    out = {}
    for r in records:
        if r["protocol"] == protocol:
            out[r["label"]] = r
    return out


# ---- running a row ----

def edgeq(*args) -> None:
    result = subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"edgeq {shlex.join(map(str, args))} failed:\n{result.stderr[-2000:]}")


def checkpoint_dir(work: Path, row: Row, protocol: Protocol, commit: str | None = None) -> Path:
    """Rows that differ only in the slice they evaluate share one checkpoint. The commit is part of the name:
    the same arguments quantize differently once a default changes (97d4d9b made the learned methods train
    another block loss, and two rows re-scored checkpoints of the old default under the new label)."""
    blob = json.dumps([commit or git_commit(), *row.quantize_args(protocol)])
    return work / f"{row.method}-w{row.bits}-g{row.group}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def quantize_command(row: Row, protocol: Protocol, checkpoint: Path) -> list[str]:
    """The `edgeq quantize` arguments that make a row's checkpoint (the row's command, as --commands prints it)."""
    return ["quantize", *row.quantize_args(protocol), "--out", str(checkpoint), "--quiet"]


def eval_command(row: Row, protocol: Protocol, checkpoint: Path | None, json_path: Path) -> list[str]:
    """The `edgeq eval` arguments that score a row (fp32: no checkpoint) on every held-out text at once."""
    texts = [text for _, text in protocol.texts]
    sliced = ["--bits", str(row.slice_bits)] if row.slice_bits else []
    return ["eval", *([str(checkpoint)] if checkpoint else []), "--text", *texts, "--seq-len", str(protocol.seq_len),
            "--max-windows", str(protocol.windows), "--json", str(json_path), "--quiet", *sliced]


def evaluate(row: Row, protocol: Protocol, work: Path, checkpoint: Path | None) -> dict:
    """Perplexity on every held-out text of the protocol, one edgeq eval process (the model loaded once)."""
    path = work / "eval.json"
    if any(text == str(news_path()) for _, text in protocol.texts):
        news_text()  # fetched once where this clone has no ../shared/data (harness.py)
    edgeq(*eval_command(row, protocol, checkpoint, path))
    results = json.loads(path.read_text())
    results = results if isinstance(results, list) else [results]
    return {label: {"perplexity": r["perplexity"], "windows": r["windows"], "text": r["text"]}
            for (label, _), r in zip(protocol.texts, results)}


def quantize_seconds(stats: dict) -> float:
    """The job's time as `edgeq quantize` reports it (forward, Hessian and solver seconds are parts of it), the
    end-to-end step (--e2e-epochs) included."""
    return round(stats["seconds_load"] + stats.get("seconds_sensitivity", 0) + stats["seconds_quantize"]
                 + stats.get("seconds_e2e", 0), 1)


def run_row(row: Row, protocol: Protocol, work: Path, fp: dict | None) -> dict:
    started, load = time.time(), os.getloadavg()[0]
    record = {**row.key(protocol.name), "label": row.label, "spec": row.spec, "commit": git_commit(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "load_1min": round(load, 2)}
    if row.method == "fp32":
        record["eval"] = evaluate(row, protocol, work, None)
    else:
        ckpt = checkpoint_dir(work, row, protocol, record["commit"])
        if not (ckpt / "quantization.json").is_file():
            edgeq(*quantize_command(row, protocol, ckpt))
        stats = json.loads((ckpt / "quantization.json").read_text())["stats"]
        record["quantize_seconds"] = quantize_seconds(stats)
        record["stats"] = stats
        record["peak_rss_mb"] = stats.get("peak_rss_mb")
        record["eval"] = evaluate(row, protocol, work, ckpt)
    for label, result in record["eval"].items():
        if fp is not None:
            result["over_fp"] = round(result["perplexity"] / fp["eval"][label]["perplexity"], 4)
    record["row_seconds"] = round(time.time() - started, 1)
    return record


# ---- the table ----

def table_spec(record: dict) -> str:
    """The group a row is ranked in: rows with --layer-grid keep some layers wider than their spec, so they
    are larger than the rows of that spec and are not ranked against them."""
    return record["spec"] + (" + layers by hand" if "--layer-grid" in record["flags"] else "")


def render_table(records: list[dict], protocol: Protocol, source: Path = RESULTS, command: str | None = None) -> str:
    """Markdown: per spec, rows in the order first measured; the lowest perplexity per text in bold.
    `source` is the results file the records came from, `command` the one that measured them (the default:
    the method table's)."""
    rows = latest(records, protocol.name)
    fp = next((r for r in rows.values() if r["method"] == "fp32"), None)
    labels = [label for label, _ in protocol.texts]
    head = "| spec | method | " + " | ".join(f"{t} ppl (x fp)" for t in labels) + " | quantize min | peak RSS MB |"
    lines = [head, "|" + "---|" * (4 + len(labels))]
    if fp:
        lines.append("| fp32 | - | " + " | ".join(f"{fp['eval'][t]['perplexity']:.2f}" for t in labels) + " | - | - |")
    by_spec: dict[str, list[dict]] = {}
    for r in rows.values():
        if r["method"] != "fp32":
            by_spec.setdefault(table_spec(r), []).append(r)
    for spec, group in by_spec.items():
        best = {t: min(r["eval"][t]["perplexity"] for r in group) for t in labels}
        for r in group:
            cells = []
            for t in labels:
                ppl = r["eval"][t]["perplexity"]
                ratio = f" ({ppl / fp['eval'][t]['perplexity']:.3f})" if fp else ""
                cell = f"{ppl:.2f}{ratio}"
                cells.append(f"**{cell}**" if ppl == best[t] and len(group) > 1 else cell)
            method = " ".join([r["method"], *r["flags"]])
            minutes = f"{r['quantize_seconds'] / 60:.1f}" if r.get("quantize_seconds") is not None else "-"
            if r.get("stats", {}).get("resumed_from_block"):  # the time of the resumed part only
                minutes = f"{minutes} (resumed at block {r['stats']['resumed_from_block']})"
            rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"
            lines.append(f"| {spec} | {method} | " + " | ".join(cells) + f" | {minutes} | {rss} |")
    texts = ", ".join(f"{label} ({Path(next(iter(rows.values()))['eval'][label]['text']).name if rows else '?'})"
                      for label in labels)
    windows = f"the first {protocol.windows} x {protocol.seq_len} tokens of each"
    note = (f"Protocol `{protocol.name}`: calibration `{' '.join(protocol.calib_flags)}` on edgeq's default "
            f"text; held out: {texts}, {windows}. Generated by `python benchmarks/generated_docs.py` "
            f"from {source.relative_to(ROOT)} ({len(rows)} rows). Quantize minutes depend on the machine's "
            f"load (each row records its 1-minute load): compare them between rows measured back to back. "
            f"Each row's commands: `{command or f'python benchmarks/quality.py --commands --protocol {protocol.name}'}`.")
    return note + "\n\n" + "\n".join(lines)


def row_commands(row: Row, protocol: Protocol, work: Path) -> str:
    """A row's commands as a user would type them: a comment with its label, then quantize (none for fp32)
    and eval, exactly as run_row runs them."""
    ckpt = None if row.method == "fp32" else checkpoint_dir(work, row, protocol)
    commands = ([quantize_command(row, protocol, ckpt)] if ckpt else []) + [
        eval_command(row, protocol, ckpt, work / "eval.json")]
    return "\n".join([f"# {row.label}", *("edgeq " + shlex.join(c) for c in commands)])


# ---- main ----

def selected(rows: list[Row], only: list[str]) -> list[Row]:
    return [r for r in rows if all(text in r.label for text in only)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="standard-512x128", choices=list(PROTOCOLS))
    parser.add_argument("--only", nargs="*", default=[], help="rows whose label contains every one of these")
    parser.add_argument("--row", action="append", default=[], help="an extra row: METHOD BITS GROUP [flags] [@SLICE]")
    parser.add_argument("--again", action="store_true", help="rerun rows already in the results file")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "quality", help="checkpoints live here")
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--list", action="store_true", help="list the rows and whether each is done")
    parser.add_argument("--commands", action="store_true", help="print the edgeq commands of each row and stop")
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    records = read_results(args.results)
    if args.table:
        return print(render_table(records, protocol))
    rows = [Row.parse(text) for text in args.row] if args.row else selected(standard_rows(), args.only)
    if args.list:
        for row in rows:
            print(("done  " if is_done(records, row, protocol.name) else "todo  ") + row.label)
        return
    if args.commands:
        return print("\n".join(row_commands(row, protocol, args.work) for row in rows))
    args.work.mkdir(parents=True, exist_ok=True)
    remade = set()  # checkpoints --again has already redone in this run (slices of one file share it)
    for row in [Row("fp32")] + [r for r in rows if r.method != "fp32"]:
        if is_done(records, row, protocol.name) and not (args.again and row in rows):
            continue
        if args.again and row.method != "fp32":  # again means quantize again, not re-score the old file
            ckpt = checkpoint_dir(args.work, row, protocol)
            if ckpt not in remade:
                shutil.rmtree(ckpt, ignore_errors=True)
                remade.add(ckpt)
        fp = latest(read_results(args.results), protocol.name).get("fp32")
        print(f"row: {row.label} ...", file=sys.stderr, flush=True)
        try:
            record = run_row(row, protocol, args.work, fp)
        except RuntimeError as e:  # one failed row is reported and the rest still run
            print(f"row failed: {row.label}: {e}", file=sys.stderr, flush=True)
            continue
        append_result(args.results, record)
        summary = ", ".join(f"{t} {v['perplexity']:.2f}" for t, v in record["eval"].items())
        print(f"done: {row.label}: {summary} ({record['row_seconds']:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

"""benchmarks/quality.py, the method-table runner: skip/append logic and table rendering on a fake results
file. No model runs here: run_row is replaced by a recorder."""
from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_runner", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def fake_record(quality, row, protocol, ppl: dict[str, float], seconds=60.0):
    return {**row.key(protocol), "label": row.label, "spec": row.spec, "quantize_seconds": seconds,
            "peak_rss_mb": 1000.0, "eval": {t: {"perplexity": p, "windows": 40, "text": t} for t, p in ppl.items()}}


def test_row_parse_and_label(quality):
    row = quality.Row.parse("gptq 3 128 --damp 0.1")
    assert (row.method, row.bits, row.group, row.flags, row.slice_bits) == ("gptq", 3, "128", ("--damp", "0.1"), None)
    assert row.label == "gptq W3 g128 --damp 0.1"
    sliced = quality.Row.parse("matquant 8 64 @4")
    assert sliced.slice_bits == 4 and sliced.spec == "W8 g64 @4" and sliced.flags == ()
    assert quality.Row.parse("fp32").label == "fp32"
    assert quality.Row("rtn", 4, "channel").spec == "W4 per-channel"
    with pytest.raises(SystemExit):
        quality.Row.parse("gptq 4")


def test_quantize_args_put_row_flags_after_the_protocol(quality):
    protocol = quality.PROTOCOLS["standard"]
    args = quality.Row("gptq", 4, "128", ("--samples", "32")).quantize_args(protocol)
    assert args[:6] == ["--method", "gptq", "--bits", "4", "--group-size", "128"]
    assert args.index("32") > args.index("128", 6)  # argparse: the later --samples wins
    mixed = quality.Row("gptq", 4, "128", ("--budget", "3.0")).quantize_args(protocol)
    assert "--bits" not in mixed and mixed[-2:] == ["--budget", "3.0"]  # --budget picks the widths


def test_standard_rows_are_distinct_and_fp32_first(quality):
    rows = quality.standard_rows()
    keys = [json.dumps(r.key("standard"), sort_keys=True) for r in rows]
    assert len(set(keys)) == len(keys)
    assert rows[0].method == "fp32"


def test_append_then_skip_unless_again(quality, tmp_path, monkeypatch):
    results = tmp_path / "quality.jsonl"
    ran = []

    def fake_run(row, protocol, work, fp):
        ran.append(row.label)
        base = 20.0 if row.method == "fp32" else 25.0
        return {**fake_record(quality, row, protocol.name, {"persuasion": base, "news": base + 10}), "row_seconds": 1}

    monkeypatch.setattr(quality, "run_row", fake_run)
    argv = ["--results", str(results), "--work", str(tmp_path / "work"), "--row", "gptq 4 128"]
    quality.main(argv)
    assert ran == ["fp32", "gptq W4 g128"]
    lines = results.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["label"] == "gptq W4 g128"
    quality.main(argv)  # both rows are in the file: nothing runs
    assert ran == ["fp32", "gptq W4 g128"]
    quality.main(argv + ["--again"])  # the asked row again; the reference stays
    assert ran == ["fp32", "gptq W4 g128", "gptq W4 g128"]
    assert len(results.read_text().splitlines()) == 3
    quality.main(argv + ["--protocol", "calib-grid"])  # another protocol has rows of its own
    assert ran[-2:] == ["fp32", "gptq W4 g128"]


def test_again_quantizes_again_once_per_checkpoint(quality, tmp_path, monkeypatch):
    """--again redoes the checkpoint (not just the scoring of the old file), and slices of one file share
    the new one."""
    results, work = tmp_path / "quality.jsonl", tmp_path / "work"
    protocol = quality.PROTOCOLS["standard-512x128"]
    seen = []

    def fake_run(row, protocol, work, fp):
        ckpt = quality.checkpoint_dir(work, row, protocol)
        seen.append((row.label, (ckpt / "old").exists(), ckpt.exists()))
        ckpt.mkdir(parents=True, exist_ok=True)
        return {**fake_record(quality, row, protocol.name, {"persuasion": 20.0, "news": 30.0}), "row_seconds": 1}

    monkeypatch.setattr(quality, "run_row", fake_run)
    argv = ["--results", str(results), "--work", str(work), "--row", "matquant 8 64 @4", "--row", "matquant 8 64 @2"]
    quality.main(argv)
    ckpt = quality.checkpoint_dir(work, quality.Row.parse("matquant 8 64 @4"), protocol)
    (ckpt / "old").mkdir()
    seen.clear()
    quality.main(argv + ["--again"])
    assert seen == [("matquant W8 g64 @4", False, False), ("matquant W8 g64 @2", False, True)]


def test_a_checkpoint_is_shared_by_slices_but_not_across_commits(quality):
    """The same arguments quantize differently once a default changes: a checkpoint of another commit is never
    re-scored under a row's label."""
    protocol, work = quality.PROTOCOLS["standard-512x128"], Path("/w")
    a4, a2 = quality.Row.parse("matquant 8 64 @4"), quality.Row.parse("matquant 8 64 @2")
    assert quality.checkpoint_dir(work, a4, protocol, "abc1234") == quality.checkpoint_dir(work, a2, protocol, "abc1234")
    assert quality.checkpoint_dir(work, a4, protocol, "abc1234") != quality.checkpoint_dir(work, a4, protocol, "def5678")
    assert quality.checkpoint_dir(work, a4, protocol) == quality.checkpoint_dir(work, a4, protocol, quality.git_commit())


def test_a_failed_row_is_reported_and_not_written(quality, tmp_path, monkeypatch, capsys):
    results = tmp_path / "quality.jsonl"

    def fake_run(row, protocol, work, fp):
        if row.method != "fp32":
            raise RuntimeError("edgeq quantize failed")
        return fake_record(quality, row, protocol.name, {"persuasion": 20.0, "news": 30.0}) | {"row_seconds": 1}

    monkeypatch.setattr(quality, "run_row", fake_run)
    quality.main(["--results", str(results), "--work", str(tmp_path), "--row", "rtn 4 128", "--row", "gptq 4 128"])
    assert [json.loads(x)["label"] for x in results.read_text().splitlines()] == ["fp32"]
    assert capsys.readouterr().err.count("row failed") == 2


def test_table_bolds_the_best_of_each_spec_and_uses_the_latest_rerun(quality):
    protocol = quality.PROTOCOLS["standard"]
    Row = quality.Row
    records = [fake_record(quality, Row("fp32"), "standard", {"persuasion": 20.0, "news": 30.0}),
               fake_record(quality, Row("rtn", 4, "128"), "standard", {"persuasion": 24.0, "news": 40.0}),
               fake_record(quality, Row("gptq", 4, "128"), "standard", {"persuasion": 22.0, "news": 99.0}),
               fake_record(quality, Row("gptq", 4, "128"), "standard", {"persuasion": 22.0, "news": 36.0}),
               fake_record(quality, Row("gptq", 3, "128"), "standard", {"persuasion": 30.0, "news": 60.0})
               | {"stats": {"resumed_from_block": 7}},  # its time is only the resumed part's
               fake_record(quality, Row("rtn", 4, "128"), "calib-grid", {"persuasion": 1.0, "news": 1.0})]
    table = quality.render_table(records, protocol)
    lines = table.splitlines()
    assert "| fp32 | - | 20.00 | 30.00 | - | - |" in lines
    assert "| W4 g128 | rtn | 24.00 (1.200) | 40.00 (1.333) | 1.0 | 1000 |" in lines
    assert "| W4 g128 | gptq | **22.00 (1.100)** | **36.00 (1.200)** | 1.0 | 1000 |" in lines
    assert "| W3 g128 | gptq | 30.00 (1.500) | 60.00 (2.000) | 1.0 (resumed at block 7) | 1000 |" in lines  # no bold
    assert "99.00" not in table and "(4 rows)" in table  # the older gptq run and the other protocol are not shown


def test_rows_with_hand_kept_layers_are_not_ranked_against_their_smaller_spec(quality):
    protocol = quality.PROTOCOLS["standard"]
    Row = quality.Row
    records = [fake_record(quality, Row("gptq", 2, "64"), "standard", {"persuasion": 90.0, "news": 300.0}),
               fake_record(quality, Row("rtn", 2, "64"), "standard", {"persuasion": 99.0, "news": 400.0}),
               fake_record(quality, Row("gptq", 2, "64", ("--layer-grid", "down_proj=4:128")), "standard",
                           {"persuasion": 60.0, "news": 100.0})]
    lines = quality.render_table(records, protocol).splitlines()
    assert "| W2 g64 | gptq | **90.00** | **300.00** | 1.0 | 1000 |" in lines
    assert "| W2 g64 + layers by hand | gptq --layer-grid down_proj=4:128 | 60.00 | 100.00 | 1.0 | 1000 |" in lines


def test_quantize_seconds_do_not_count_the_parts_twice(quality):
    stats = {"seconds_load": 10.0, "seconds_sensitivity": 0.0, "seconds_quantize": 100.0, "seconds_forward": 40.0,
             "seconds_hessian": 20.0, "seconds_solver": 30.0, "seconds_block_training": 0.0}
    assert quality.quantize_seconds(stats) == 110.0


def test_printed_commands_are_the_ones_run_row_runs(quality, tmp_path, monkeypatch, capsys):
    """--commands prints what run_row executes: a fake edgeq records the calls and writes what they would."""
    calls = []

    def fake_edgeq(*args):
        calls.append(list(args))
        if args[0] == "quantize":
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True)
            stats = {"seconds_load": 1.0, "seconds_quantize": 2.0, "peak_rss_mb": 9.0}
            (out / "quantization.json").write_text(json.dumps({"stats": stats}))
        else:
            Path(args[args.index("--json") + 1]).write_text(json.dumps([{"perplexity": 5.0, "windows": 40,
                                                                        "text": "t"}] * 2))

    monkeypatch.setattr(quality, "edgeq", fake_edgeq)
    protocol = quality.PROTOCOLS["standard-512x128"]
    row = quality.Row.parse("matquant 8 64 @4")
    quality.run_row(row, protocol, tmp_path, None)
    quality.main(["--commands", "--row", "matquant 8 64 @4", "--work", str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "# matquant W8 g64 @4"
    assert [shlex.split(line)[1:] for line in printed[1:]] == calls
    assert calls[1][-2:] == ["--bits", "4"] and "--bits" not in calls[1][:-2]  # the slice is evaluated
    quality.main(["--commands", "--row", "fp32", "--work", str(tmp_path)])
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]] == ["eval"]  # no quantize


def test_vs_genai_builder_table_joins_quality_rows_with_each_engines_bench():
    spec = importlib.util.spec_from_file_location("vs_genai_builder", ROOT / "benchmarks" / "vs_genai_builder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # it imports quality.py from its own folder
    spec.loader.exec_module(module)
    first, second = module.ENTRIES[:2]
    evals = {"persuasion": {"perplexity": 40.0, "over_fp": 1.08}, "news": {"perplexity": 33.0, "over_fp": 1.07}}
    records = [{"phase": "quality", "entry": first.name, "folder": "/f/a", "make_seconds": None, "model_mb": 82.5,
                "eval": evals},
               {"phase": "quality", "entry": second.name, "folder": "/f/b", "make_seconds": 21.0, "model_mb": 76.6,
                "eval": evals},
               {"phase": "bench", "engine": "genai", "models": {"/f/a": {"decode_p50_ms": 3.5}}},
               {"phase": "bench", "engine": "genai", "models": {"/f/a": {"decode_p50_ms": 3.25}}}]
    lines = module.render(records).splitlines()
    assert len(lines) == 4  # header, rule, one line per measured entry
    assert lines[2] == f"| {first.name} | 40.00 (1.080) | 33.00 (1.070) | 82.5 | 3.25 | - | - |"  # the latest bench
    assert lines[3].endswith("| 76.6 | - | - | 21 |")
    del sys.modules[spec.name]


@pytest.fixture
def targets(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports quality.py as its neighbour
    spec = importlib.util.spec_from_file_location("quality_targets", ROOT / "benchmarks" / "quality_targets.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_every_target_compares_rows_of_the_standard_table(quality, targets):
    """A label typed wrong would leave its target pending forever."""
    labels = {row.label for row in quality.standard_rows()}
    for target in targets.TARGETS:
        assert target.row in labels and target.reference in labels, target


def test_targets_are_met_only_below_the_limit_on_every_text(quality, targets):
    Row, texts = quality.Row, ["persuasion", "news"]
    target = targets.Target("x below gptq", "decoupleq W2 g64", "gptq W2 g64", 0.7)
    ref = fake_record(quality, Row("gptq", 2, "64"), "p", {"persuasion": 100.0, "news": 300.0})
    one_text = fake_record(quality, Row("decoupleq", 2, "64"), "p", {"persuasion": 60.0, "news": 240.0})
    both = fake_record(quality, Row("decoupleq", 2, "64"), "p", {"persuasion": 60.0, "news": 200.0})
    line = targets.verdict(target, {ref["label"]: ref, one_text["label"]: one_text}, texts)
    assert line == "- x below gptq: **MISSED**: persuasion 0.600 x (60.00 vs 100.00), news 0.800 x (240.00 vs 300.00)"
    assert "**MET**" in targets.verdict(target, {ref["label"]: ref, both["label"]: both}, texts)
    assert "pending (`decoupleq W2 g64` not measured yet)" in targets.verdict(target, {ref["label"]: ref}, texts)


def test_a_method_is_outclassed_only_by_another_cheaper_method_better_at_each_of_its_specs(quality, targets):
    Row, texts = quality.Row, ["persuasion", "news"]

    def rec(row, persuasion, news, minutes):
        return fake_record(quality, row, "p", {"persuasion": persuasion, "news": news}, seconds=minutes * 60)
    records = [rec(Row("gptq", 4, "128"), 38.0, 35.0, 3), rec(Row("gptq", 3, "128"), 46.0, 53.0, 3),
               rec(Row("lrq", 4, "128"), 40.0, 38.0, 10), rec(Row("lrq", 3, "128"), 48.0, 61.0, 12),
               # better on one text only: not outclassed
               rec(Row("signround", 4, "128"), 37.0, 36.0, 12),
               # better than gptq but slower; its own cheaper ablation does not count as a rival
               rec(Row("flexround", 3, "128"), 45.0, 52.0, 15),
               rec(Row("flexround", 3, "128", ("--block-loss", "relative")), 44.0, 47.0, 12),
               # a larger row (hand-kept 4-bit layers) is not a rival of W2 g64
               rec(Row("gptq", 2, "64", ("--layer-grid", "down_proj=4:128")), 60.0, 100.0, 3),
               rec(Row("cdquant", 2, "64"), 90.0, 270.0, 4)]
    rows = {r["label"]: r for r in records}
    lines = targets.outclassed(rows, texts)
    assert lines == ["- `lrq` loses to `gptq` at every spec it was measured at (W4 g128: 40.00 / 38.00 vs 38.00 / "
                     "35.00 in 10.0 vs 3.0 min; W3 g128: 48.00 / 61.00 vs 46.00 / 53.00 in 12.0 vs 3.0 min)"]

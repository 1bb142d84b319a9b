"""benchmarks/aarch64/compare.py's verdicts and table on fake results: no ARM root, no model runs here."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("aarch64_compare", ROOT / "benchmarks" / "aarch64" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def export_folder(tmp_path: Path, name: str, level: int, nodes: int) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    (folder / "export.json").write_text(json.dumps({"accuracy_level": level, "matmulnbits_nodes": nodes}))
    return folder


@pytest.mark.parametrize("level,nodes,exact", [(0, 120, True), (4, 0, True), (4, 120, False)])
def test_float_or_level_0_exports_are_held_exact(compare, tmp_path, level, nodes, exact):
    held = compare.held_to(export_folder(tmp_path, "m", level, nodes))
    assert held == (exact, compare.EXACT_LIMIT if exact else compare.APPROXIMATE_LIMIT)


def record(compare, label, difference, exact, tokens_arm, cpu="neoverse-n1"):
    x86 = {"perplexity": 40.0, "tokens": [1, 2, 3, 4], "seconds": 2.0, "windows": 4}
    arm = {"perplexity": 40.0 * (1 + difference), "tokens": tokens_arm, "seconds": 90.0, "windows": 4}
    limit = compare.EXACT_LIMIT if exact else compare.APPROXIMATE_LIMIT
    return {"label": label, "qemu_cpu": cpu, "seq_len": 128, **compare.compared(x86, arm, exact, limit)}


def test_compared_counts_the_greedy_tokens_equal_before_the_first_difference(compare):
    x86 = {"perplexity": 40.0, "tokens": [1, 2, 3, 4]}
    assert compare.compared(x86, {"perplexity": 40.0, "tokens": [9, 2, 3, 4]}, True, 1e-4)["tokens_same_prefix"] == 0
    assert compare.compared(x86, {"perplexity": 40.0, "tokens": [1, 2, 9, 4]}, True, 1e-4)["tokens_same_prefix"] == 2
    assert compare.compared(x86, {"perplexity": 40.0, "tokens": [1, 2, 3, 4]}, True, 1e-4)["tokens_same_prefix"] == 4


def test_verdicts_follow_the_issue_limits(compare):
    assert compare.verdict(record(compare, "w4-acc0", 5e-5, True, [1, 2, 3, 4]))
    assert not compare.verdict(record(compare, "w4-acc0", 5e-5, True, [1, 2, 9, 4]))  # tokens must match at level 0
    assert not compare.verdict(record(compare, "w4-acc0", 2e-4, True, [1, 2, 3, 4]))
    assert compare.verdict(record(compare, "w4-acc4", 4e-3, False, [1, 2, 9, 4]))  # level 4: perplexity only
    assert not compare.verdict(record(compare, "w4-acc4", 6e-3, False, [1, 2, 3, 4]))


def test_results_merge_per_layout_and_core_and_render_one_row_each(compare, tmp_path):
    path = tmp_path / "aarch64.json"
    compare.merge(path, record(compare, "w4-acc0", 5e-5, True, [9, 2, 3, 4]))
    compare.merge(path, record(compare, "w4-acc0", 5e-5, True, [1, 2, 3, 4], cpu="max"))
    compare.merge(path, record(compare, "w4-acc0", 1e-5, True, [1, 2, 3, 4]))  # a rerun replaces its row
    lines = compare.table(path).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| w4-acc0 on max | 4 x 128 | 40.0000 | 40.0020 | 5.0e-05 (1e-04) | yes | pass | 90 / 2 |"
    assert lines[3].startswith("| w4-acc0 on neoverse-n1 | 4 x 128 | 40.0000 | 40.0004 | 1.0e-05 (1e-04) | yes | "
                               "pass |")


def test_a_layout_must_name_an_exported_folder(compare, tmp_path):
    folder = export_folder(tmp_path, "w8", 4, 120)
    assert compare.parse_layout(f"w8@4={folder}") == ("w8@4", folder.resolve(), "4")
    with pytest.raises(SystemExit, match="LABEL=FOLDER"):
        compare.parse_layout(str(folder))
    with pytest.raises(SystemExit, match="LABEL=FOLDER"):
        compare.parse_layout(f"x={tmp_path}")

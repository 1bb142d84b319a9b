"""Every script in benchmarks/ still imports: they are run by hand, weeks apart, so a name removed from a
module they share (quality.py) would otherwise surface only when someone needs the figure again. Import
only; no script's main() runs here."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.relative_to(BENCHMARKS).as_posix() for p in BENCHMARKS.rglob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their neighbours, as when run from there
    name = "benchmark_" + script.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)  # raises if a name it imports is gone

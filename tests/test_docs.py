"""The documentation stays true: every generated block (README.md, docs/, benchmarks/README.md) is what
benchmarks/generated_docs.py renders now from benchmarks/results and the method records, every relative link
points at a file that exists, and the README stays a guide (<= 200 lines)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import generated_docs  # noqa: E402

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_generated_block_is_fresh():
    stale = generated_docs.stale()
    assert not stale, "stale (run python benchmarks/generated_docs.py): " + ", ".join(stale)


def test_the_documents_have_generated_blocks_and_the_check_sees_a_change(tmp_path):
    names = {m.group("name") for path in generated_docs.DOCUMENTS
             for m in generated_docs.BLOCK.finditer(path.read_text())}
    assert {"recommended", "methods-summary", "quality:standard-512x128", "method-options:gptq"} <= names
    doc = tmp_path / "d.md"
    doc.write_text("<!-- generated:methods-summary -->\ntyped by hand\n<!-- /generated:methods-summary -->\n")
    body = generated_docs.BLOCK.search(doc.read_text()).group("body")
    assert body != generated_docs.render("methods-summary").rstrip() + "\n"
    assert generated_docs.refreshed(doc.read_text()).count("| `gptq`") == 0  # links, not bare names
    assert "[`gptq`](docs/methods.md#gptq)" in generated_docs.refreshed(doc.read_text())


def test_every_registered_method_has_its_section_and_options_in_methods_md():
    from edgeq.solvers import method_names
    text = (ROOT / "docs" / "methods.md").read_text()
    for name in method_names():
        assert f"\n## {name}\n" in text and f"<!-- generated:method-options:{name} -->" in text, name


@pytest.mark.parametrize("path", generated_docs.DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    for target in LINK.findall(path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to missing {target}"


def test_readme_is_a_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200

"""The package's imports point one way. Every `import` in edgeq/ (at the top of a module or inside a function:
a lazy import is still a dependency) is an arrow between two rooms: a top-level module, or a whole subpackage
(calib/, cli/, evaluation/, export/, io/, kernels/, planning/, quant/, runtime/, solvers/, util/). An
import circle between rooms, or between modules inside one, fails here with the arrows that close it; so does a
room missing from docs/contributing.md's map or an arrow that runs up that map."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeq"
MAP = PACKAGE.parent / "docs" / "contributing.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The edgeq modules a file imports, resolved to the modules that exist (from .x import name: the module x.name
    when it is one, else x)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != this}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(files)) for name, path in files.items()}


def room(module: str) -> str:
    """edgeq.calib.pipeline -> edgeq.calib; a top-level module (api, config, errors, texts) is its own room."""
    parts = module.split(".")
    return ".".join(parts[:2])


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def describe(component: list[str], edges: dict[str, set[str]]) -> str:
    inside = set(component)
    return "; ".join(f"{a} -> {b}" for a in component for b in sorted(edges.get(a, ())) if b in inside)


def test_no_import_circle_between_modules():
    edges = graph()
    found = circles(edges)
    assert not found, "\n".join(describe(c, edges) for c in found)


def test_no_import_circle_between_rooms():
    edges: dict[str, set[str]] = {}
    for a, targets in graph().items():
        edges.setdefault(room(a), set()).update(room(b) for b in targets if room(b) != room(a))
    found = circles(edges)
    assert not found, "\n".join(describe(c, edges) for c in found)


def test_the_check_sees_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert room("edgeq.calib.pipeline") == "edgeq.calib" and room("edgeq.quant.grid") == "edgeq.quant" and room("edgeq.api") == "edgeq.api"


def map_order() -> list[str]:
    """The rooms in the order docs/contributing.md's map lists them ('edgeq/io/' -> edgeq.io, 'edgeq/api.py' ->
    edgeq.api)."""
    text = MAP.read_text().split("## Where things live", 1)[1].split("```")[1]
    return [line.split()[0].rstrip("/").removesuffix(".py").replace("/", ".")
            for line in text.splitlines() if line.startswith("edgeq/")]


def test_imports_run_down_the_map():
    order = map_order()
    arrows = {(room(a), room(b), a, b) for a, targets in graph().items() for b in targets}
    rooms = {r for ra, rb, _, _ in arrows for r in (ra, rb)} - {"edgeq"}
    assert rooms <= set(order), f"rooms missing from docs/contributing.md's map: {sorted(rooms - set(order))}"
    up = [f"{a} -> {b}" for ra, rb, a, b in sorted(arrows)
          if ra != rb and "edgeq" not in (ra, rb) and order.index(rb) < order.index(ra)]
    assert not up, "imports that run up the map: " + "; ".join(up)

"""The import graph of ``imer`` has no cycle and follows the layer order written in docs/architecture.md."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "imer"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def module_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the ``imer`` modules it imports, anywhere in its source (inside functions and ``TYPE_CHECKING`` too)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import; imer imports absolutely"
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def declared_layers(text: str) -> list[list[str]]:
    """The layer block of docs/architecture.md, top first: the names before the description of each line."""
    block = text.split("<!-- layers: top first -->", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    return [re.split(r"\s{2,}", line.strip())[0].split() for line in block.splitlines() if line.strip()]


def layer_violations(graph: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    """Every import of a package from one on its own line or a higher one, and every package the layers do not place."""
    rank = {name: len(layers) - i for i, line in enumerate(layers) for name in line}

    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    out = [f"{m}: package '{package(m)}' has no layer" for m in sorted(graph) if package(m) not in rank]
    for source in sorted(graph):
        for target in sorted(graph[source]):
            a, b = package(source), package(target)
            if a != b and a in rank and b in rank and rank[a] <= rank[b]:
                out.append(f"{source} imports {target} ({'same layer' if rank[a] == rank[b] else 'upward'})")
    return out


def test_no_import_cycle_between_modules():
    assert cycles(module_graph(PACKAGE)) == []


def test_imports_follow_the_documented_layers():
    assert layer_violations(module_graph(PACKAGE), declared_layers(ARCHITECTURE.read_text())) == []


def test_a_planted_cycle_is_found():
    graph = {"imer.a": {"imer.b"}, "imer.b": {"imer.c"}, "imer.c": {"imer.a"}, "imer.d": {"imer.a"}}
    assert cycles(graph) == [["imer.a", "imer.b", "imer.c"]]


def test_upward_and_sibling_imports_are_found():
    layers = [["top"], ["middle", "beside"], ["bottom"]]
    graph = {"imer.bottom.x": {"imer.top.y"}, "imer.top.y": {"imer.bottom.x"}, "imer.middle.z": {"imer.beside.w"},
             "imer.beside.w": set(), "imer.stray": set()}
    assert layer_violations(graph, layers) == [
        "imer.stray: package 'stray' has no layer",
        "imer.bottom.x imports imer.top.y (upward)",
        "imer.middle.z imports imer.beside.w (same layer)",
    ]


@pytest.mark.parametrize("planted", ["cycle", "upward"])
def test_planted_import_in_a_copy_of_the_package_fails(tmp_path, planted):
    copy = tmp_path / "imer"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.toml"))
    metrics = copy / "evaluation" / "metrics.py"
    if planted == "cycle":  # an import inside a function counts
        target = copy / "evaluation" / "significance.py"
        metrics.write_text(metrics.read_text() + "\n\ndef _planted():\n    from imer.evaluation import significance\n")
        assert "imer.evaluation.metrics" in target.read_text()
        assert ["imer.evaluation.metrics", "imer.evaluation.significance"] in cycles(module_graph(copy))
    else:
        metrics.write_text(metrics.read_text() + "\n\ndef _planted():\n    from imer.reports import runs\n")
        violations = layer_violations(module_graph(copy), declared_layers(ARCHITECTURE.read_text()))
        assert violations == ["imer.evaluation.metrics imports imer.reports.runs (upward)"]

"""The sampling package has no import cycle (constrained ↔ memory used to import each other inside
functions), counting imports at any depth: a cycle hidden in a function body is still a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import zoomldm.sampling

PACKAGE = Path(zoomldm.sampling.__file__).parent


def _graph() -> dict[str, set[str]]:
    """module → the sampling modules it imports (``from .x import``, ``from zoomldm.sampling.x import``,
    ``import zoomldm.sampling.x``), wherever the import statement is."""
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        edges = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1:
                    targets = [base] if base else [a.name for a in node.names]
                elif base.startswith("zoomldm.sampling."):
                    targets = [base.split(".")[2]]
                elif base == "zoomldm.sampling":
                    targets = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[2] for a in node.names if a.name.startswith("zoomldm.sampling.")]
            edges.update(t.split(".")[0] for t in targets if t.split(".")[0] in modules)
        graph[name] = edges - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    assert {"newton", "memory", "levels"} <= graph["constrained"]  # top-level imports
    assert "superres" in graph["reference"]  # an import inside a function body
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_the_sampling_package():
    assert _cycle(_graph()) is None


def test_memory_imports_alone():
    # in a fresh interpreter, so it does not rely on constrained having been imported first (constrained
    # itself is imported first by most other tests)
    code = "import zoomldm.sampling.memory as m; assert m.newton_constrain"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

"""The package's import structure: no cycle anywhere, and layers that follow the data.

Both tests read every module's source with ``ast`` and count every import statement wherever it stands
(module level, inside functions, under ``if TYPE_CHECKING:``): an import hidden in a function body is
still a dependency, and a type named in a signature is one too.

``LAYERS`` is the package in the order data flows, top (what users run) to bottom (what everything
uses). A module may import its own layer and the layers below it; an import of a layer above fails the
test with the importing module, its line and the imported module. Peers in one layer may import each
other, in one direction only (the cycle test sees to that).

Why this shape (the issue's proposal, kept): the applications are thin over the Python API
(``pipeline``); the tasks (sampling, training, features, evaluation) take a loaded model and data; data
preparation uses the SSL encoders and the VQ of a model, so ``data`` sits above ``models``; the models
are built from configs and loaded from checkpoint files (``checkpoints`` resolves names and converts
the authors' keys, it builds no network); file formats and small utilities are at the bottom and know
nothing of models. Placements the proposal left open: ``dtypes``, ``schedule`` and ``conditioning``
are core rules that models use, so they sit with ``config`` and ``scales``; ``devices`` (the
``--device`` / ``--optimize`` / ``--compile`` rules) applies speed settings to a loaded model, so it sits
with the models; the bundled ``assets`` are data files, at the bottom. The loaded model itself
(``models.bundle.ZoomLDMModel``: networks, loading, saving) is a model; sampling is the pipeline's, a
subclass one layer up, so that training, data preparation and features take the model without
importing the API above them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import zoomldm

PACKAGE = Path(zoomldm.__file__).parent

#: top → bottom; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, list[str]]] = [
    ("applications", ["zoomldm", "zoomldm.__main__", "zoomldm.cli", "zoomldm.demo", "zoomldm.viewer"]),
    ("api", ["zoomldm.pipeline"]),
    ("tasks", ["zoomldm.sampling", "zoomldm.train", "zoomldm.features", "zoomldm.evaluation"]),
    ("data", ["zoomldm.data"]),
    ("models", ["zoomldm.models", "zoomldm.devices"]),
    (
        "core",
        [
            "zoomldm.checkpoints",
            "zoomldm.config",
            "zoomldm.scales",
            "zoomldm.conditioning",
            "zoomldm.schedule",
            "zoomldm.dtypes",
        ],
    ),
    (
        "formats and utilities",
        [
            "zoomldm.io",
            "zoomldm.tensorfiles",
            "zoomldm.fsutil",
            "zoomldm.errors",
            "zoomldm.progress",
            "zoomldm.assets",
        ],
    ),
]

#: old import paths kept for one release after a move (each warns with DeprecationWarning when used);
#: importer → the module it forwards to, and the release that drops it
DEPRECATED_ALIASES: dict[tuple[str, str], str] = {
    ("zoomldm.io", "zoomldm.viewer.server"): "0.2",
    ("zoomldm.io.viewer", "zoomldm.viewer.server"): "0.2",
    ("zoomldm.io.explorer", "zoomldm.viewer.explorer"): "0.2",
    ("zoomldm.models.embedded", "zoomldm.pipeline"): "0.2",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The package module that ``name`` (a module or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> dict[str, int]:
    """zoomldm module → first line where ``module`` imports it, at any depth of its source."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            if full == "zoomldm" or full.startswith("zoomldm."):
                # `from pkg import sub` imports the submodule when there is one, else a name of pkg
                targets = [f"{full}.{a.name}" if f"{full}.{a.name}" in MODULES else full for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == "zoomldm" or a.name.startswith("zoomldm.")]
        for target in targets:
            resolved = _resolve(target)
            if resolved and resolved != module:
                found.setdefault(resolved, node.lineno)
    return found


def graph(aliases: bool = False) -> dict[str, dict[str, int]]:
    """Every module's imports; without the :data:`DEPRECATED_ALIASES` edges unless ``aliases`` (an alias
    is a forward resolved when the old name is used, never while its module is imported)."""
    found = {m: imports(m) for m in MODULES}
    if not aliases:
        for importer, target in DEPRECATED_ALIASES:
            found.get(importer, {}).pop(target, None)
    return found


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer of LAYERS: add it to the table")
    return best[0]


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, {})):
            if w not in g:
                continue
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
                found.append(_one_cycle(g, set(component)))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def _one_cycle(g: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first), for the message."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w in component and w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def upward_imports(g: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for module in sorted(g):
        for target, line in sorted(g[module].items()):
            if layer_of(target) < layer_of(module):
                bad.append(
                    f"{module}:{line} imports {target} "
                    f"({LAYERS[layer_of(module)][0]} → {LAYERS[layer_of(target)][0]})"
                )
    return bad


def test_the_graph_sees_every_kind_of_import() -> None:
    g = graph()
    assert "zoomldm.errors" in g["zoomldm.scales"] or "zoomldm.errors" in g["zoomldm.config"]
    # relative imports at two levels, and one inside a function body
    assert {"zoomldm.sampling.newton", "zoomldm.sampling.memory"} <= set(g["zoomldm.sampling.constrained"])
    assert any(t.startswith("zoomldm.") for t in g["zoomldm.cli.core"])
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycle_in_the_package() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" → ".join(c) for c in found)


def test_no_module_imports_a_layer_above_its_own() -> None:
    bad = upward_imports(graph())
    assert not bad, "imports of a layer above:\n" + "\n".join(bad)


def test_every_deprecated_alias_still_exists_and_is_lazy() -> None:
    g = graph(aliases=True)
    for (importer, target), release in DEPRECATED_ALIASES.items():
        assert target in g.get(importer, {}), f"{importer} no longer forwards to {target}: drop the entry"
        assert release > zoomldm.__version__, f"{importer}: the alias was to go in {release}"


def test_data_never_imports_sampling_and_models_never_import_data_or_the_pipeline() -> None:
    g = graph()
    for module, targets in g.items():
        for target in targets:
            if module.startswith("zoomldm.data"):
                assert not target.startswith("zoomldm.sampling"), (module, target)
            if module.startswith("zoomldm.models"):
                assert not target.startswith(("zoomldm.data", "zoomldm.pipeline")), (module, target)


def test_modules_stay_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    big = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split along their responsibilities): {big}"


#: "about 400 lines" (DESIGN.md's size for a model file); a little slack for a docstring
MAX_LINES = 450


def test_every_module_imports() -> None:
    # in a fresh interpreter, in name order: no module fails at import time (a shim, a moved name)
    names = sorted(m for m in MODULES if m != "zoomldm.__main__")
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


if __name__ == "__main__":  # the summary for a review: python tests/test_layers.py
    g = graph()
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in MODULES.items()), reverse=True)
    print(f"modules {len(g)}, import edges {sum(len(v) for v in g.values())}")
    print(f"cycles {len(cycles(g))}, upward imports {len(upward_imports(g))}")
    print(f"deprecated aliases {len(DEPRECATED_ALIASES)} (lazy, warn; go in 0.2)")
    print("largest modules: " + ", ".join(f"{m} {n}" for n, m in sizes[:3]))

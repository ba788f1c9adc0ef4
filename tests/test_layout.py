"""The house rules of the code layout, read from the source: imports only point down the layers, no module
imports itself back through another (at module level or inside a function), and the headless core pulls no
UI library (nor umap-learn) at import time."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A package may import only packages of lower layers (never its own layer's neighbours).
LAYERS = [
    {"workbench.config"},
    {"workbench.runs", "workbench.device", "workbench.metrics"},
    {"workbench.data"},
    {"workbench.augment"},
    {"workbench.models"},
    {"workbench.methods"},
    {"workbench.train"},
    {"workbench.trained"},
    {"workbench.evaluation", "workbench.inspect"},
    {"workbench.executors"},
    {"workbench.experiments"},
    {"workbench.cli", "workbench"},
    {"widgets"},
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (module level and inside functions)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in found if m.split(".")[0] in ("workbench", "widgets")}


def _graph() -> dict[str, set[str]]:
    files = [p for d in ("workbench", "widgets") for p in (ROOT / d).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:  # `from pkg.mod import func` -> pkg.mod
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] == "widgets" or len(parts) == 1 else ".".join(parts[:2])


def test_every_package_has_a_layer():
    missing = {_package(m) for m in _graph()} - set(RANK)
    assert not missing, f"place these packages in LAYERS: {missing}"


def test_imports_only_point_down_the_layers():
    wrong = sorted(f"{a} -> {b}" for a, targets in _graph().items() for b in targets
                   if _package(a) != _package(b) and RANK[_package(b)] >= RANK[_package(a)])
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = _graph()
    # a package's __init__ re-exports its modules; a module importing its own package's __init__ is the
    # only cycle Python resolves by itself, so only cycles through two or more plain modules count
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack and not any(ROOT.joinpath(*m.split("."), "__init__.py").exists()
                                        for m in stack[stack.index(nxt):]):
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if state.get(start) is None:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_widgets_never_reach_the_engine():
    reach = sorted(f"{a} -> {b}" for a, targets in _graph().items() if a.startswith("widgets")
                   for b in targets if b == "workbench.train" or b.startswith("workbench.train."))
    assert not reach, reach


def test_headless_core_imports_no_ui_library():
    code = ("import sys, workbench, workbench.trained, workbench.evaluation, workbench.inspect, "
            "workbench.experiments, workbench.cli; "
            "print(sorted(m for m in ('ipywidgets', 'IPython', 'plotly', 'umap') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

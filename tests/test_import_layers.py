"""The import graph of the project's own modules: no circles, and the layers hold.

`bench/ -> flows/ -> twinflow_core/`: the library never imports the orchestration (flows, Prefect, DVC, MLflow),
Lightning stays inside `twinflow_core/training/`, and no two modules import each other, directly or round a
circle. Every import counts, also one inside a function: a lazy import still makes the two modules depend on each
other. Run as a script, it lists the circles and the Lightning imports outside `twinflow_core/training/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("twinflow_core", "flows")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()

# No circle may exist; a name here would be a known one, named exactly (its modules, sorted).
ALLOWED_CIRCLES: list[list[str]] = []


def _imports(name: str, path: Path) -> set[str]:
    """Every module name `path` imports (absolute, resolved for relative imports)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _own(imported: str) -> str | None:
    """The project module an import name lands in (a name below a module, `pkg.mod.func`, is that module)."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        # a package's __init__ is imported before its submodules: an edge from a submodule to its own parent
        # package is how Python loads it, not a dependency
        graph[name] = {
            own for imp in _imports(name, path) if (own := _own(imp)) and own != name and not name.startswith(own + ".")
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_never_imports_the_orchestration():
    forbidden = ("flows", "prefect", "dvc", "mlflow", "bench")
    breaches = [
        f"{name} imports {imp}"
        for name, path in MODULES.items()
        if name.startswith("twinflow_core")
        for imp in _imports(name, path)
        if imp.split(".")[0] in forbidden
    ]
    assert breaches == []


def test_no_import_circles():
    circles = _cycles(_graph())
    assert [c for c in circles if c not in ALLOWED_CIRCLES] == []


def test_the_allowed_circles_still_exist():
    """An allowed circle that is gone comes off the list, so that it cannot come back unseen."""
    circles = _cycles(_graph())
    assert [c for c in ALLOWED_CIRCLES if c not in circles] == []


def test_lightning_stays_inside_training():
    assert lightning_outside_training() == []


def lightning_outside_training() -> list[str]:
    breaches = [
        f"{name} imports {imp}"
        for name, path in MODULES.items()
        if name.startswith("twinflow_core") and not name.startswith("twinflow_core.training")
        for imp in _imports(name, path)
        if imp.split(".")[0] in ("lightning", "pytorch_lightning")
    ]
    return breaches


if __name__ == "__main__":  # the circles and layer leaks still to remove
    for circle in _cycles(_graph()):
        print("circle:", " <-> ".join(circle))
    for line in lightning_outside_training():
        print("lightning outside training/:", line)

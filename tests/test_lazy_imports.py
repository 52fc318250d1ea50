"""Imports sit at the top of a file, where they show its neighbours. An import inside a function is allowed only
for a library that is slow to load or absent from the base install (HEAVY below, or a project module whose own
top-level imports reach one) and that the file's top-level imports do not load already; a file that has one says
so once: a comment `# Lazy imports: <libraries>` naming exactly the libraries its lazy imports bring in, and below
it, in brackets, why. Run as a script, it prints each file's lazy libraries.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache

from test_import_layers import MODULES, REPO, _own

# seconds to import (torch ~2 s, lightning, diffusers, peft, great_expectations, mlflow several), or part of the
# `pipeline` extra that the base install (sampling) lacks, or ~0.1 s that every `twinflow` call would pay
HEAVY = (
    "accelerate boto3 botocore configobj diffusers dvc dvc_s3 fastapi flask great_expectations huggingface_hub hydra "
    "lightning matplotlib mlflow numpy omegaconf pandas peft prefect psycopg pyarrow requests ruamel s3fs "
    "safetensors.torch scipy sklearn sqlalchemy starlette tokenizers torch transformers uvicorn"
).split()
NOTE = re.compile(r"^# Lazy imports: (?P<names>[\w., ]+)\n# \(.+\)$", re.M)


def _heavy_name(name: str) -> str | None:
    """The HEAVY library `name` (a module or a name in one) belongs to, if any (safetensors.torch loads torch)."""
    lib = next((h for h in HEAVY if name == h or name.startswith(h + ".")), None)
    return "torch" if lib == "safetensors.torch" else lib


def _names(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The module names an import statement loads (a `from` import: the module and each name below it)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _top_level_imports(module: str) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: at its top level, or under a top-level if/try (never under
    `if TYPE_CHECKING`)."""
    found, todo = [], list(ast.parse(MODULES[module].read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return found


@cache
def heavy_roots(module: str) -> frozenset[str]:
    """The HEAVY libraries importing `module` loads: through its top-level imports, those of the project modules
    they import, and its parent packages' (each `__init__` runs before its submodules)."""
    roots, seen, todo = set(), set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if (parent := current.rpartition(".")[0]) in MODULES:
            todo.append(parent)
        for node in _top_level_imports(current):
            for name in _names(node, current):
                if lib := _heavy_name(name):
                    roots.add(lib)
                elif target := _own(name):
                    todo.append(target)
    return frozenset(roots)


def lazy_imports(module: str) -> list[tuple[int, str, frozenset[str]]]:
    """(line, statement, the HEAVY libraries it loads that the file's top-level imports do not) of each import
    inside a function of `module`. An empty set: nothing gained by the wait, the import belongs at the top."""
    loaded, out, seen = heavy_roots(module), [], set()
    for fn in ast.walk(ast.parse(MODULES[module].read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno not in seen:
                seen.add(node.lineno)
                roots = set()
                for name in _names(node, module):
                    if lib := _heavy_name(name):
                        roots.add(lib)
                    elif (target := _own(name)) and target != module:
                        roots |= heavy_roots(target)
                out.append((node.lineno, ast.unparse(node), frozenset(roots - loaded)))
    return sorted(out)


def lazy_libraries(module: str) -> list[str]:
    return sorted(set().union(*(roots for _, _, roots in lazy_imports(module))))


def test_an_import_inside_a_function_loads_something_heavy():
    light = [
        f"{MODULES[m].relative_to(REPO)}:{line}: {statement}"
        for m in sorted(MODULES)
        for line, statement, roots in lazy_imports(m)
        if not roots
    ]
    assert light == [], "move these to the top of their file:\n" + "\n".join(light)


def note_problem(module: str) -> str | None:
    """Why `module`'s `# Lazy imports:` note is wrong (None when it names exactly its lazy libraries, once)."""
    notes = [m.group("names") for m in NOTE.finditer(MODULES[module].read_text())]
    libraries = lazy_libraries(module)
    said = sorted(n.strip() for n in notes[0].split(",")) if notes else []
    if len(notes) > 1 or said != libraries:
        return f"{module}: says {notes or 'nothing'}, imports lazily {libraries or 'nothing'}"
    return None


def test_a_file_with_lazy_imports_says_which_once():
    assert [p for m in sorted(MODULES) if (p := note_problem(m))] == []


def test_the_checks_find_a_light_lazy_import_and_a_wrong_note(tmp_path, monkeypatch):
    module = "twinflow_core.errors"  # loads no heavy library at its top
    path = tmp_path / "errors.py"
    text = MODULES[module].read_text() + "\n\ndef f():\n    import json\n    import torch\n"
    monkeypatch.setitem(MODULES, module, path)
    heavy_roots.cache_clear()
    try:
        path.write_text(text)
        assert [(s, sorted(r)) for _, s, r in lazy_imports(module)] == [
            ("import json", []),
            ("import torch", ["torch"]),
        ]
        assert note_problem(module) == f"{module}: says nothing, imports lazily ['torch']"
        path.write_text("# Lazy imports: mlflow\n# (slow)\n" + text)
        assert note_problem(module) == f"{module}: says ['mlflow'], imports lazily ['torch']"
        path.write_text("# Lazy imports: torch\n# (slow)\n" + text)
        assert note_problem(module) is None
    finally:
        heavy_roots.cache_clear()


if __name__ == "__main__":
    for name in sorted(MODULES):
        if libraries := lazy_libraries(name):
            print(f"{MODULES[name]}: {', '.join(libraries)}")
    sys.exit(0)

"""A stage's DVC deps name every library file its code can run: a change to any of them must make `dvc status` show
the stage as changed, or `dvc repro` keeps outputs the changed code would not make.

The code a stage can run is the closure of its entry point's imports inside the project (every import counts, a
lazy one inside a function too: tests/test_import_layers.py's graph), so a file is missed neither when it is
imported only on the latent-model path nor only at the end of a run. Files that cannot change an output are named
below, each with the reason; the orchestration (`flows/`) is the stage's own business and is not checked here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_import_layers import MODULES, _graph

REPO = Path(__file__).resolve().parents[1]

# library files whose change cannot change what a stage writes
NO_OUTPUT = {
    "twinflow_core/__init__.py": "the version string and the package's docstring",
    "twinflow_core/errors.py": "error classes and exit codes",
    "twinflow_core/redaction.py": "masks credentials in messages",
    "twinflow_core/bounds.py": "refuses non-finite numbers and YAML aliases; accepts nothing it would change",
}


def closure(entry: str) -> set[str]:
    graph, seen, todo = _graph(), set(), [entry]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def library_files(entry: str) -> set[str]:
    files = set()
    for name in closure(entry):
        if name.startswith("twinflow_core"):
            rel = str(MODULES[name].relative_to(REPO))
            if not rel.endswith("__init__.py") or rel == "twinflow_core/__init__.py":
                files.add(rel)  # a package's __init__ is covered with its folder or holds nothing of a stage
    return files


def declared(stage: str) -> list[str]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    return [d for d in spec["deps"] if "${" not in d]


def missing(stage: str) -> list[str]:
    deps = declared(stage)
    covered = lambda rel: any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)  # noqa: E731
    entry = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"].split("-m ", 1)[1].split()[0]
    return sorted(rel for rel in library_files(entry) if not covered(rel) and rel not in NO_OUTPUT)


@pytest.mark.parametrize("stage", ["prepare", "validate", "encode", "pretrain", "train", "evaluate"])
def test_a_stages_deps_name_every_library_file_it_can_run(stage):
    assert missing(stage) == [], f"dvc.yaml stage {stage!r}: add these deps (or name them in NO_OUTPUT with why)"


def test_the_closure_follows_lazy_imports():
    # the train stage imports Lightning's module and the latent path only inside functions
    files = library_files("flows.stages.train")
    assert "twinflow_core/training/module.py" in files and "twinflow_core/training/latent.py" in files

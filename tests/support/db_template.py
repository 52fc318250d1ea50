"""A database built once per tool version into the project's git-ignored `.prefect/`, for the suite to copy
(support/prefect_db.py, support/mlflow_db.py). A file lock lets the first of several xdist workers build it
while the others wait; the build happens in a scratch folder renamed into place, so a killed build leaves no
half template behind."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def built_once(name: str, db_name: str, build: Callable[[Path], None]) -> Path:
    """`.prefect/<name>/<db_name>`, made by `build(folder)` (which writes `folder/db_name`) when missing."""
    folder = REPO / ".prefect" / name
    db = folder / db_name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.is_file():
            building = folder.with_name(folder.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir()
            build(building)
            if not (building / db_name).is_file():
                raise RuntimeError(f"building the template {name} wrote no {db_name}")
            shutil.rmtree(folder, ignore_errors=True)
            building.rename(folder)
    return db

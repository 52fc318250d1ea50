"""An MLflow sqlite store migrated once, copied wherever a test starts a fresh store.

A new sqlite file costs MLflow ~6 s of alembic migrations on this machine (every `SqlAlchemyStore` on an empty
database runs all of them, and an `mlflow server` does the same before it answers); the suite opens a few dozen
fresh stores, in-process, in stage subprocesses and behind four servers. A copy of one migrated database skips
that: MLflow still checks the schema version on open (`_verify_schema`), so the copy must be the very schema this
MLflow version makes, and it is, being made by it.

The template holds no experiment at all: each store creates its Default experiment (id 0) on open when it is
missing, with the artifact location of *that* store (a sqlite file's folder, or a server's artifact proxy), which
a copied row would get wrong. It lives in the project's git-ignored `.prefect/`, beside Prefect's, one per MLflow
version (support/db_template.py).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from support.db_template import built_once

_BUILD = """
import sys
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
uri = "sqlite:///" + sys.argv[1]
SqlAlchemyStore(uri, sys.argv[2])
RegistryStore(uri)
"""


def template() -> Path:
    """The migrated, experiment-free template database, built on first use."""
    return built_once(f"template-mlflow-{version('mlflow')}", "mlflow.db", _migrate)


def _migrate(folder: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BUILD, str(folder / "mlflow.db"), str(folder / "mlruns")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"could not build the MLflow template database: {(done.stdout + done.stderr)[-2000:]}")
    with sqlite3.connect(folder / "mlflow.db") as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in ("experiment_tags", "experiments"):  # the Default experiment, made on open
            if table in tables:
                con.execute(f"DELETE FROM {table}")
    con.close()


def seed(db: Path) -> Path:
    """Put a copy of the migrated template at `db` unless a database is already there; returns `db`."""
    db = Path(db)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template(), db)
    return db


def sqlite_uri(db: Path) -> str:
    """The tracking URI of a seeded sqlite store at `db`."""
    return f"sqlite:///{seed(db)}"

"""A Prefect database migrated once, copied into each fresh Prefect home of the test suite.

A new sqlite database costs a Prefect server ~30 s of migrations on this machine (`prefect server database
upgrade`, mostly CPU), the same again in each xdist worker's home for the ephemeral server of in-process flows.
The suite starts six such servers: copying one migrated database into each home saves about 2 minutes of CPU per
run. The copy has the schema the server would make itself (it still runs its migration step on start, which
then has nothing to do) and no rows of any run. The template lives in the project's git-ignored `.prefect/`,
one per Prefect version (support/db_template.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from support.db_template import built_once

DB_NAME = "prefect.db"  # Prefect's default database: sqlite at $PREFECT_HOME/prefect.db


def template() -> Path:
    """The migrated template database, built on first use."""
    return built_once(f"template-prefect-{version('prefect')}", DB_NAME, _upgrade)


def _upgrade(folder: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(folder)}
    for key in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(key, None)
    prefect = Path(sys.executable).parent / "prefect"
    done = subprocess.run(
        [str(prefect), "server", "database", "upgrade", "-y"], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode:
        raise RuntimeError(f"could not build the Prefect template database: {(done.stdout + done.stderr)[-2000:]}")


def seed(home: Path) -> None:
    """Give a Prefect home without a database a copy of the migrated template."""
    home = Path(home)
    if not (home / DB_NAME).exists():
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template(), home / DB_NAME)


def standalone_env(home: Path) -> dict[str, str]:
    """The environment of a `twinflow run` as a user's plain shell gives it: the project's tools on PATH, no
    Prefect API and no tracking server configured (the run starts its own temporary Prefect server), with the
    Prefect home `home` seeded from the template."""
    from flows.dvc_ops import tool_env

    seed(home)
    env = {**tool_env(), "PREFECT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env

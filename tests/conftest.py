"""Shared test set-up: quiet, offline tools and one thread for torch (tests run beside other work on 2 cores)."""

import os
import sys

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("ITERATIVE_DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# under pytest-xdist (make test: two workers), each worker's ephemeral Prefect server gets a database of its own:
# two servers migrating and writing one SQLite file lock each other out
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("PREFECT_HOME"):
    os.environ["PREFECT_HOME"] = os.path.join(os.environ["PREFECT_HOME"], "xdist-" + os.environ["PYTEST_XDIST_WORKER"])
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)  # Prefect makes only the last level (a warning else)
if os.environ.get("PREFECT_HOME") and not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
    from support import prefect_db  # noqa: E402

    prefect_db.seed(os.environ["PREFECT_HOME"])  # a migrated database: ~30 s less at the first in-process flow

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402
from support.checkout_guard import changed, snapshot, tool_stores, tracked_files  # noqa: E402

_TRACKED = tracked_files()
_STATE = snapshot(_TRACKED)
_STORES = tool_stores()  # a developer's own mlflow.db is theirs: only new ones count


@pytest.fixture(autouse=True)
def _checkout_untouched():
    """Fail the test that modifies, deletes or re-creates a tracked file of the checkout (use tmp_path copies)."""
    global _STATE, _STORES
    yield
    now = snapshot(_TRACKED)
    touched = changed(_STATE, now)
    _STATE = now  # report each change once, against the test that made it
    if touched:
        pytest.fail(
            f"this test modified tracked file(s) of the checkout: {touched[:8]}; work on a tmp_path copy", pytrace=False
        )
    stores = tool_stores()
    made, _STORES = sorted(stores - _STORES), stores
    if made:
        pytest.fail(
            f"{made} appeared in the checkout during this test (a tool's default store in its working "
            f"folder; under xdist possibly another worker's test): give it a tmp_path location",
            pytrace=False,
        )


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_uris_restored():
    """Give each test the MLflow target it started with. mlflow.set_tracking_uri / set_registry_uri (tests, and
    flows.tracking.configure in-process) set a module global *and* os.environ, and the global outranks a later
    test's MLFLOW_TRACKING_URI: after a test that pointed mlflow at a server it then stopped, the next test of the
    same xdist worker logged to the dead server (CI of 9ca945b, test_quiet_logs)."""
    before = {key: os.environ.get(key) for key in _MLFLOW_ENV}
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)  # None: back to "read MLFLOW_TRACKING_URI", and the variable unset
        mlflow.set_registry_uri(None)
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_collection_modifyitems(session, config, items):
    """Files with end-to-end (`slow`) tests first, so that under two workers (--dist loadfile) the minutes-long
    files are shared out at the start and the quick ones fill the gaps, instead of one long file starting last."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept

"""Who may write which registered model on a shared MLflow server: the production model's name, the account
this client acts as, and MLflow's refusals as one line naming the account and what it may not do. The
permissions model itself is flows/release.py's docstring; flows/registry.py, flows/register_step.py,
flows/release_lock.py and flows/release.py all read these. MLflow is imported where a server is asked (it takes
seconds to import)."""

# Lazy imports: mlflow
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import os

from twinflow_core.errors import TrackingError

PRODUCTION_SUFFIX = "-production"


def production_name(name: str) -> str:
    return name + PRODUCTION_SUFFIX


def account() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or None


def is_refusal(err: BaseException) -> bool:
    """An MLflow answer that says "not you" (401: who you are; 403: what you may do)."""
    text = f"{getattr(err, 'error_code', '')} {err}"
    return _unauthenticated(text) or any(
        mark in text for mark in ("error code 403", "PERMISSION_DENIED", "Permission denied")
    )


def _unauthenticated(text: str) -> bool:
    return any(mark in text for mark in ("error code 401", "UNAUTHENTICATED", "not authenticated"))


def explain(err: BaseException, account: str | None, action: str) -> TrackingError:
    """An MLflow auth refusal as one line naming the account and what it may not do (the registry's family, 14)."""
    text = f"{getattr(err, 'error_code', '')} {err}"
    who = f"account {account!r}" if account else "this client (no MLFLOW_TRACKING_USERNAME)"
    if _unauthenticated(text):
        return TrackingError(
            f"{action}: the MLflow server refused {who}: wrong user name or password "
            "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        )
    if is_refusal(err):
        return TrackingError(
            f"{action}: {who} lacks the permission on the MLflow server "
            "(see infra/README.md: the pipeline writes <name>, release managers <name>-production)"
        )
    return TrackingError(f"{action}: {(str(err).strip().splitlines() or [type(err).__name__])[0]}")


def exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")) + str(err):
            return False
        raise

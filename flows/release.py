"""Promotion into production on a shared MLflow server with basic-auth (the permissions model of infra/README.md).

MLflow's EDIT permission on a registered model covers every alias, so `challenger` and `champion` of one model
cannot be split between two accounts. Production is therefore a second registered model, `<name>-production`:

    <name>              the pipeline's account registers versions there and moves `challenger` (and the gate's
                        own `champion`: what the pipeline recommends); release managers and readers: READ
    <name>-production   created by a release manager, who holds MANAGE on it; everyone else: READ (the
                        server's default permission), so the pipeline's account cannot write there at all
    promote             (a release manager) copies <name> version N into <name>-production (MLflow's
                        copy_model_version: same artifacts, lineage tags kept) and sets `champion` there

Consumers load `models:/<name>-production@champion`.
"""
from __future__ import annotations

from twinflow_core.errors import TrackingError

PRODUCTION_SUFFIX = "-production"
CHAMPION = "champion"


def production_name(name: str) -> str:
    return name + PRODUCTION_SUFFIX


def explain(err: Exception, account: str | None, action: str) -> TrackingError:
    """An MLflow auth refusal as one line naming the account and what it may not do (the registry's family, 14)."""
    text = str(err)
    who = f"account {account!r}" if account else "this client (no MLFLOW_TRACKING_USERNAME)"
    if "401" in text or "not authenticated" in text:
        return TrackingError(f"{action}: the MLflow server refused {who}: wrong user name or password "
                             "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
    if "403" in text or "Permission denied" in text or "PERMISSION_DENIED" in text:
        return TrackingError(f"{action}: {who} lacks the permission on the MLflow server "
                             "(see infra/README.md: only release managers write the production model)")
    return TrackingError(f"{action}: {(text.strip().splitlines() or [type(err).__name__])[0]}")


def promote_to_production(client, name: str, version: str, account: str | None = None) -> str:
    """Copy `name` version `version` into `<name>-production` and make the copy `champion` there."""
    from mlflow.exceptions import MlflowException, RestException

    prod = production_name(name)
    action = f"promote {name} v{version} to {prod}@{CHAMPION}"
    try:
        client.get_model_version(name, str(version))
        copy = client.copy_model_version(f"models:/{name}/{version}", prod)
        client.set_model_version_tag(prod, copy.version, "source", f"models:/{name}/{version}")
        client.set_registered_model_alias(prod, CHAMPION, copy.version)
    except (MlflowException, RestException) as err:
        raise explain(err, account, action) from None
    return f"{prod} v{copy.version} (from {name} v{version}) is now {CHAMPION}"

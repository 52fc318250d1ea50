"""Releases on a shared MLflow server with basic-auth (the permissions model of infra/README.md).

MLflow's EDIT permission on a registered model covers every alias, so `challenger` and `champion` of one model
cannot be split between two accounts. Production is therefore a second registered model, `<name>-production`:

    <name>              the pipeline's account registers versions there and moves `challenger` (and the gate's
                        own `champion`: what the pipeline recommends); release managers and readers: READ
    <name>-production   release managers hold MANAGE on it; everyone else: READ (the server's default
                        permission), so the pipeline's account cannot write there at all
    promote / rollback  `twinflow models promote NAME VERSION` by a release manager copies <name> version N into
                        <name>-production (MLflow's copy_model_version: same artifacts, lineage tags kept; a version
                        promoted before is reused) and sets `champion` there; `rollback NAME` moves it back.
                        Where <name>-production exists these commands act on it; where it does not (the embedded
                        store), on <name> itself.

Each of the two models has its release lock (flows/release_lock.py), `<model>.release-lock`. Every name is
reserved at set-up, before any other account could take it: `twinflow models setup NAME --pipeline ACCOUNT
--release ACCOUNT [--experiment E]` run by the server's admin creates the models, the locks and the experiment
and grants MANAGE on each to the account that writes it; everyone else keeps the server's default (READ). A name
some other account created before set-up is taken back (the squatter's grant revoked) when it holds nothing yet,
and refused otherwise (one line naming it and the account).

Consumers load `models:/<name>-production@champion`.

MLflow's client and auth modules are imported in `setup`: they take seconds to import.
"""

# Lazy imports: mlflow
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import warnings

from flows import registry, release_lock, tracking
from flows.access import account, production_name
from twinflow_core.errors import TrackingError, UsageError


def promote_to_production(client, name: str, version: str, account: str | None = None, gate=None) -> str:
    """Copy `name` version `version` into `<name>-production` and make the copy `champion` there (under the
    production model's release lock, with its audit record); `gate`: re-checked first when given."""
    return registry.promote(client, name, version, gate, production=True)


# ---- set-up: names reserved for the accounts that write them ----


def setup(uri: str, name: str, *, pipeline: str, release: str, experiment: str, log=print) -> list[str]:
    """Create (or take back) every name the pipeline and release managers write, and grant each its writer.
    Run as the server's admin. Returns the lines it printed."""

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with warnings.catch_warnings():  # the auth client imports MLflow's server app, which warns about Starlette
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    if tracking.is_local_store(uri):
        raise UsageError(
            f"setup: {uri} is a local store, which has no accounts to reserve names for; point "
            "--tracking-uri or MLFLOW_TRACKING_URI at the team's MLflow server"
        )
    client, auth = MlflowClient(uri, uri), AuthServiceClient(uri)
    me = account() or "admin"
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        log(line)

    if not auth.get_user(me).is_admin:
        raise TrackingError(
            f"setup: account {me!r} is not an admin of {uri}: only the server's admin may grant "
            "permissions (MLFLOW_TRACKING_USERNAME=admin)"
        )
    users = _users(auth)
    for who in (pipeline, release):
        if who not in users:
            raise TrackingError(
                f"setup: account {who!r} does not exist on {uri} (create it first: "
                "AuthServiceClient.create_user, infra/README.md)"
            )
    models = {
        name: pipeline,
        release_lock.lock_name(name): pipeline,
        production_name(name): release,
        release_lock.lock_name(production_name(name)): release,
    }
    for model, owner in models.items():
        made = False
        try:
            client.create_registered_model(model, description=f"reserved by `twinflow models setup` for {owner}")
            made = True
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
        if not made:
            squatters = _writers(auth, users, "registered_model", model, allowed={me, owner})
            if squatters:
                holds = client.search_model_versions(f"name='{model}'", max_results=1)
                if holds:
                    raise TrackingError(
                        f"setup: registered model {model!r} was created by account "
                        f"{squatters[0]!r} and holds versions: delete it as admin, then run setup "
                        "again"
                    )
                for who in squatters:
                    auth.revoke_user_permission(who, "registered_model", model)
                say(f"{model}: taken back from {', '.join(squatters)} (created before set-up, empty)")
        auth.grant_user_permission(owner, "registered_model", model, "MANAGE")
        say(f"{model}: MANAGE for {owner}; others: the server's default (READ)")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = client.create_experiment(experiment)
    else:
        exp_id = exp.experiment_id
        squatters = _writers(auth, users, "experiment", exp_id, allowed={me, pipeline})
        if squatters:
            raise TrackingError(
                f"setup: experiment {experiment!r} was created by account {squatters[0]!r} (its "
                f"artifact location is theirs to choose: {exp.artifact_location}); delete it as "
                "admin (and `mlflow gc` the name), then run setup again"
            )
    auth.grant_user_permission(pipeline, "experiment", exp_id, "MANAGE")
    say(f"experiment {experiment} (id {exp_id}): MANAGE for {pipeline}; others: READ")
    return lines


def _users(auth) -> set[str]:
    from mlflow.server.auth.routes import LIST_USERS

    body = auth._request(LIST_USERS, "GET")  # admins may change anything anyway: not counted
    return {u["username"] for u in body.get("users", []) if not u.get("is_admin")}


def _writers(auth, users: set[str], resource_type: str, resource_id: str, allowed: set[str]) -> list[str]:
    """Accounts other than `allowed` that may change the resource (a grant above READ)."""
    found = []
    for user in sorted(users - allowed):
        try:
            got = auth.get_user_permission(user, resource_type, str(resource_id))
        except Exception:  # noqa: BLE001 - an account the check cannot read holds no grant we could revoke
            continue
        if got.permission in ("EDIT", "MANAGE"):
            found.append(user)
    return found

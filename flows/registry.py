"""The model registry's rules: versions, aliases `challenger` and `champion`, champion history, promote and rollback.

Rules:
- `champion` moves by the register step (flows/register_step.py: a new version that passes the gate and is not
  worse than the champion) or by a release manager: promote by hand (the gate is re-checked; a failing version
  only with force and a reason, both recorded) and roll back to the previous champion (the model's
  `champion_history` tag);
- where `<name>-production` exists (a team server), promote and rollback move its `champion` (flows/release.py).
Every move of `champion` (registration, promote, rollback) runs under the model's release lock and appends an
audit record (flows/release_lock.py), so concurrent release actions cannot lose a history entry.
Aliases only; MLflow's deprecated stages are never used. MLflow is imported where the registry is asked (it takes
seconds to import).
"""

# Lazy imports: mlflow
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import json

from flows import access, release_lock
from flows.gating import GateConfig, Verdict, check_gate
from twinflow_core.errors import ConfigError, GateRefused, TrackingError, TwinflowError

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"


def client_for(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code):
            return []
        raise
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def scores_of(version) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(version.tags.get("scores", "{}")).items()}
    except (ValueError, TypeError):
        return {}


def champion_version(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _history(client, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags or {}
    return [v for v in tags.get(HISTORY_TAG, "").split(",") if v]


def set_champion(client, name: str, version, action: str, **why) -> dict:
    """Move `champion` to `version` and append the move to `champion_history` and the audit trail. Call it under
    flows.release_lock.release_lock: the history is read, changed and written back."""
    version = str(version)
    previous = champion_version(client, name)
    history = _history(client, name)
    if not history or history[-1] != version:
        history.append(version)
    release_lock.set_alias_checked(client, name, version)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[-50:]))
    return release_lock.append_audit(
        client,
        name,
        {"action": action, "champion": version, "previous": str(previous.version) if previous else None, **why},
    )


def find_registered(client, name: str, key: str):
    for version in _versions(client, name):
        if version.tags.get("registration_key") == key:
            return version
    return None


# ---- release managers' operations (twinflow models ...) ----


def list_versions(client, name: str | None = None) -> list[dict]:
    names = [name] if name else [m.name for m in client.search_registered_models() if not release_lock.is_lock(m.name)]
    rows = []
    for model in names:
        versions = _versions(client, model)
        # search results from a tracking server leave aliases out; the registered model has them all
        by_version: dict[str, list[str]] = {}
        if versions:
            for alias, ver in (client.get_registered_model(model).aliases or {}).items():
                by_version.setdefault(str(ver), []).append(alias)
        for v in versions:
            rows.append(
                {
                    "name": model,
                    "version": str(v.version),
                    "aliases": sorted(by_version.get(str(v.version), [])),
                    "verdict": v.tags.get("gate.verdict", "?"),
                    "scores": scores_of(v),
                    "forced": v.tags.get("promotion.forced") == "true",
                    "commit": v.tags.get("lineage.git_commit", "")[:10],
                    "data": v.tags.get("lineage.data_md5", "")[:10],
                    "checkpoint": v.tags.get("lineage.checkpoint_md5", "")[:10],
                    "run_id": v.run_id or "",
                    "flow_run": v.tags.get("lineage.prefect_flow_run_id", ""),
                    "created": v.creation_timestamp,
                }
            )
    return rows


def _version(client, name: str, version: str):
    """The model version, or one line: no such version (exit 14), or the server's refusal of this account."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if access.is_refusal(err):
            raise access.explain(err, access.account(), f"read {name} v{version}") from None
        raise TrackingError(f"model {name!r} has no version {version}") from None


def _production_copy(client, name: str, version: str, target: str) -> str:
    """The version of `target` that is a copy of `name` v`version` (made now unless one was made before)."""
    source = f"models:/{name}/{version}"
    for mv in client.search_model_versions(f"name='{target}'"):
        if (mv.tags or {}).get("source") == source:
            return str(mv.version)
    copy = client.copy_model_version(source, target)
    client.set_model_version_tag(target, copy.version, "source", source)
    return str(copy.version)


def release_target(client, name: str, production: bool | None = None) -> str:
    """The model whose `champion` release actions move: `<name>-production` where it exists (a team server set up
    by `twinflow models setup`), else `name` itself."""
    exists = access.exists(client, access.production_name(name)) if production is not False else False
    if production and not exists:
        raise TrackingError(
            f"{access.production_name(name)} does not exist: the server's admin reserves it for the "
            f"release managers with `twinflow models setup {name} --pipeline ... --release ...`"
        )
    return access.production_name(name) if exists else name


def promote(
    client,
    name: str,
    version: str,
    gate: GateConfig | None,
    force: bool = False,
    reason: str | None = None,
    production: bool | None = None,
) -> str:
    """Make `version` champion after re-checking the gate on its recorded scores: of `name`, or, where
    `<name>-production` exists, of that model (a copy of the version is made there)."""
    from mlflow.exceptions import MlflowException

    if force and not (reason and reason.strip()):
        raise ConfigError('--force needs --reason "..." (it is recorded on the version)')
    mv = _version(client, name, version)
    verdict = check_gate(scores_of(mv), gate) if gate is not None else Verdict(True, ["gate not re-checked"])
    if not verdict.passed and not force:
        raise GateRefused(
            f'{name} v{version} fails the gate ({verdict.text()}); promote anyway with --force --reason "..."'
        )
    forced = bool(force and not verdict.passed)
    target = release_target(client, name, production)
    action = f"promote {name} v{version}" + (f" to {target}@{CHAMPION}" if target != name else "")
    try:
        with release_lock.release_lock(client, target):
            moved = _production_copy(client, name, str(version), target) if target != name else str(version)
            record = set_champion(
                client,
                target,
                moved,
                "promote",
                reason=reason or "",
                verdict=verdict.label,
                forced=forced,
                **({"source": f"models:/{name}/{version}"} if target != name else {}),
            )
            tags = {
                "promotion.by": record["by"],
                "promotion.at": record["at"],
                "promotion.gate_recheck": verdict.label,
                "promotion.forced": str(forced).lower(),
                "promotion.previous": record["previous"] or "",
                "promotion.audit_seq": str(record["seq"]),
            }
            if reason:
                tags["promotion.reason"] = reason
            for key, value in tags.items():
                client.set_model_version_tag(target, moved, key, value)
    except MlflowException as err:
        if access.is_refusal(err):
            raise access.explain(err, access.account(), action) from None
        raise
    was = f" (was v{record['previous']})" if record["previous"] else ""
    forced_text = " despite a failing gate (forced)" if not verdict.passed else ""
    if target != name:
        return f"{target} v{moved} (from {name} v{version}) is now {CHAMPION}{forced_text}{was}"
    return f"{name} v{version} is now champion{forced_text}{was}"


def rollback(client, name: str, reason: str | None = None, production: bool | None = None) -> str:
    """Champion back to the one before it in `champion_history`: of `<name>-production` where it exists."""
    from mlflow.exceptions import MlflowException

    target = release_target(client, name, production)
    try:
        return _rollback(client, target, reason)
    except MlflowException as err:
        if access.is_refusal(err):
            raise access.explain(err, access.account(), f"rollback {target}@{CHAMPION}") from None
        raise


def _rollback(client, name: str, reason: str | None) -> str:
    with release_lock.release_lock(client, name):
        current = champion_version(client, name)
        if current is None:
            raise TrackingError(f"model {name!r} has no champion to roll back")
        cur = str(current.version)
        history = _history(client, name)
        while history and history[-1] == cur:
            history.pop()
        if not history:
            raise TrackingError(f"{name}: v{cur} is the first champion; there is none to roll back to")
        target = history[-1]
        try:
            client.get_model_version(name, target)
        except Exception as err:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST; others are re-raised
            if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(err, "error_code", "")) + str(err):
                raise
            raise TrackingError(
                f"{name}: v{target}, the champion before v{cur}, was deleted from the registry; "
                f"promote the version you want instead (twinflow models promote {name} VERSION)"
            ) from None
        release_lock.set_alias_checked(client, name, target)
        client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
        record = release_lock.append_audit(
            client,
            name,
            {
                "action": "rollback",
                "champion": target,
                "previous": cur,
                "reason": reason or "",
                "verdict": "",
                "forced": False,
            },
        )
        client.set_model_version_tag(name, cur, "rolled_back", f"{record['at']} by {record['by']}")
    return f"{name}: champion rolled back from v{cur} to v{target}"


def lineage_ref(client, name: str, version: str) -> tuple[str, str]:
    """(git ref, commit) of the run that made `version` (tags lineage.git_ref / lineage.git_ref_commit)."""
    mv = _version(client, name, version)
    ref, commit = mv.tags.get("lineage.git_ref"), mv.tags.get("lineage.git_ref_commit")
    if not ref or not commit:
        raise TwinflowError(
            f"{name} v{version} names no git ref (registered before runs were saved as refs); "
            f"its commit was {mv.tags.get('lineage.git_commit', '?')[:10]}"
        )
    return ref, commit


def lineage_repo(client, name: str, version: str) -> str | None:
    """The repository that holds the version's git ref (tag lineage.git_repo): the git remote the ref was pushed
    to, else the checkout the run was saved in; None for a version registered before the tag existed."""
    return client.get_model_version(name, str(version)).tags.get("lineage.git_repo") or None

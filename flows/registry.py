"""The model registry: versions, gate verdicts, aliases `challenger` and `champion`, promote and rollback.

Rules:
- every new version gets alias `challenger` and tags with its scores, the gate verdict and its reasons;
- `champion` moves only when the gate passes and the version is not worse than the current champion by
  more than `gate.champion_margin`;
- registering the same weights with the same scores twice creates no second version (tag `registration_key`);
- a release manager may promote by hand (the gate is re-checked; a failing version only with force and a
  reason, both recorded) and roll back to the previous champion (the model's `champion_history` tag).
Every move of `champion` (registration, promote, rollback) runs under the model's release lock and appends an
audit record (flows/release_lock.py), so concurrent release actions cannot lose a history entry.
Aliases only; MLflow's deprecated stages are never used.
"""

from __future__ import annotations

import glob
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flows import access, dvc_ops, release_lock, tracking
from flows.faults import StageFailed, TransientFault, is_transient
from flows.gating import GateConfig, Verdict, check_gate, compare_to_champion, ratio_values
from flows.model_card import lean_version
from flows.params import load_params, section
from flows.tracking import mlflow_key
from twinflow_core.errors import ConfigError, GateRefused, TrackingError, TwinflowError
from twinflow_core.files import check_finite_weights
from twinflow_core.redaction import redact

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"
REGISTER_DEFAULTS = {
    "model_name": "twinflow-shapes",
    "experiment": "twinflow-pipeline",
    "tracking_uri": "",
    "checkpoint": "checkpoints/twinflow",
    "metrics": "metrics/eval.json",
    "artifacts": ["reports/samples_*.png", "reports/data", "metrics/eval.json", "dvc.lock", "params.yaml"],
    "weights_dtype": "float32",  # a full fine-tune's registered transformer: float32 | bfloat16 | float16
}
# lineage name -> path prefix of the dvc.lock output it names (checkpoint and metrics come from params)
LINEAGE_OUTPUTS = {"data": "data/prepared", "base": "checkpoints/base"}


@dataclass
class Registration:
    name: str
    version: str
    created: bool  # False: this key was registered before, nothing new was made
    verdict: Verdict
    promoted: bool
    champion: str | None  # the champion's version after this registration
    aliases: list[str] = field(default_factory=list)
    decision: str = ""


def _client(uri: str | None = None):
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


def _set_champion(client, name: str, version, action: str, **why) -> dict:
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


def register(
    client,
    *,
    name: str,
    model_uri: str,
    run_id: str,
    key: str,
    scores: dict[str, float],
    gate: GateConfig,
    tags: dict[str, str],
) -> Registration:
    """Create version (alias challenger) with score/verdict tags, then move champion if it has earned it."""
    import mlflow

    verdict = check_gate(scores, gate)
    all_tags = dict(tags)
    all_tags.update(
        {
            "registration_key": key,
            "scores": json.dumps(scores, sort_keys=True),
            "gate.verdict": verdict.label,
            "gate.reasons": verdict.text(),
            "gate.min": json.dumps(gate.minimums, sort_keys=True),
        }
    )
    if gate.ratios:
        all_tags["gate.ratio"] = json.dumps({r.metric: {"of": r.of, "min": r.min} for r in gate.ratios}, sort_keys=True)
        all_tags.update(
            {
                f"ratio.{mlflow_key(k.replace(' / ', '_over_'))}": f"{v:.4f}"
                for k, v in ratio_values(scores, gate).items()
            }
        )
    all_tags.update({f"score.{mlflow_key(k)}": f"{v:.6g}" for k, v in scores.items() if k in gate.gated_metrics})
    from flows.quiet import mlflow_registration_chatter_muted

    with mlflow_registration_chatter_muted():  # "Creating a new version...", printed even before a refusal
        mv = mlflow.register_model(model_uri, name, tags={k: redact(str(v)) for k, v in all_tags.items()})
    version = str(mv.version)
    # register_model may return before the version is READY on a server; aliases need it READY.
    for _ in range(120):
        if client.get_model_version(name, version).status == "READY":
            break
        time.sleep(0.5)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return _decide_champion(client, name, version, scores, verdict, gate)


def _decide_champion(client, name, version, scores, verdict, gate) -> Registration:
    with release_lock.release_lock(client, name):  # the champion read here must still be it when we move it
        return _decide_champion_locked(client, name, version, scores, verdict, gate)


def _decide_champion_locked(client, name, version, scores, verdict, gate) -> Registration:
    current = champion_version(client, name)
    if not verdict.passed:
        decision = f"not promoted: gate failed ({verdict.text()})"
        promoted = False
    elif current is None:
        decision, promoted = "promoted: gate passed, no previous champion", True
    else:
        against = compare_to_champion(scores, scores_of(current), gate)
        promoted = against.passed
        decision = (
            f"promoted: gate passed and {against.text()}"
            if promoted
            else f"not promoted: worse than champion v{current.version} ({against.text()})"
        )
    if promoted:
        _set_champion(client, name, version, "register", reason=decision, verdict=verdict.label, forced=False)
    client.set_model_version_tag(name, version, "champion.decision", decision)
    champ = champion_version(client, name)
    aliases = client.get_model_version(name, version).aliases
    return Registration(
        name=name,
        version=str(version),
        created=True,
        verdict=verdict,
        promoted=promoted,
        champion=str(champ.version) if champ else None,
        aliases=list(aliases),
        decision=decision,
    )


def existing_registration(client, version, gate: GateConfig) -> Registration:
    verdict = Verdict(
        version.tags.get("gate.verdict") == "passed", [r for r in version.tags.get("gate.reasons", "").split("; ") if r]
    )
    champ = champion_version(client, version.name)
    fresh = client.get_model_version(version.name, version.version)
    return Registration(
        name=version.name,
        version=str(version.version),
        created=False,
        verdict=verdict,
        promoted=False,
        champion=str(champ.version) if champ else None,
        aliases=list(fresh.aliases),
        decision=version.tags.get("champion.decision", ""),
    )


def register_outputs(
    root: Path,
    *,
    flow_run_id: str = "",
    run_name: str | None = None,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
    project: Path | None = None,
    git_ref: dict | None = None,
) -> dict:
    """The pipeline's last step: one MLflow run for this pipeline run (params, metrics, artifacts,
    lineage tags) and, unless these weights and scores were registered before, a new model version
    gated as above. A down tracking server raises TransientFault naming it; nothing is deleted.
    `root` is where the stages ran; `project` the checkout it came from (default: root), whose sqlite
    store and mlartifacts/ a local MLflow uses. `git_ref` {"ref", "commit"}: the run's saved workspace
    (flows.workspace.save_run_ref), recorded as lineage.git_ref / lineage.git_ref_commit so that
    `twinflow models reproduce` can check the version out again."""
    start = time.monotonic()
    project = project or root
    params = load_params(root / "params.yaml")
    reg = section(params, "register", REGISTER_DEFAULTS)
    gate = GateConfig.from_params(params, where=str(root / "params.yaml"))
    scores = tracking.read_scores(root / reg["metrics"])
    checkpoint = root / reg["checkpoint"]
    if not (checkpoint / "model.safetensors").is_file():
        raise StageFailed(f"{checkpoint}: no model.safetensors to register (did the train stage run?)")
    check_finite_weights(checkpoint / "model.safetensors")  # a NaN model is never a version, let alone champion
    uri = tracking.resolve_tracking_uri(project, params, tracking_uri)
    tracking.check_reachable(uri)
    try:
        tracking.configure(uri)
        experiment_id = tracking.ensure_experiment(reg["experiment"], project, uri)
        lineage = {**LINEAGE_OUTPUTS, "checkpoint": reg["checkpoint"], "metrics": reg["metrics"]}
        tags = {**tracking.lineage_tags(dvc_ops.lock_hashes(root), lineage), **tracking.git_state(root)}
        if git_ref:
            tags.update({"lineage.git_ref": git_ref["ref"], "lineage.git_ref_commit": git_ref["commit"]})
            if git_ref.get("repo"):  # where a plain clone fetches the ref from (`twinflow models reproduce`)
                tags["lineage.git_repo"] = git_ref["repo"]
        if flow_run_id:
            tags["lineage.prefect_flow_run_id"] = flow_run_id
        key = tracking.registration_key(tags, checkpoint, root / reg["metrics"])
        client = _client(uri)
        existing = find_registered(client, reg["model_name"], key)
        artifacts = []
        for pattern in reg["artifacts"]:
            for match in sorted(glob.glob(str(root / pattern))):
                path = Path(match)
                dest = path.relative_to(root).parent if path.is_file() else path.relative_to(root)
                artifacts.append((path, "" if str(dest) == "." else str(dest)))
        run_tags = {**tags, "registration_key": key}
        if existing is not None:
            run_tags["registered_version"] = str(existing.version)
        with tempfile.TemporaryDirectory(prefix="twinflow-version-") as scratch:
            # the version holds what draws images (flows/model_card.py), not the training state
            lean = (
                lean_version(root, checkpoint, Path(scratch) / "generator", params, scores, tags)
                if existing is None
                else checkpoint
            )
            run_id, model_uri = tracking.log_pipeline_run(
                repo=root,
                experiment_id=experiment_id,
                run_name=run_name or f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
                params=params,
                scores=scores,
                tags=run_tags,
                artifacts=artifacts,
                checkpoint_dir=lean,
                log_model=existing is None,
            )
        if existing is not None:
            result = existing_registration(client, existing, gate)
            log(f"these weights and scores are already {reg['model_name']} v{existing.version}: no new version")
        else:
            result = register(
                client,
                name=reg["model_name"],
                model_uri=model_uri,
                run_id=run_id,
                key=key,
                scores=scores,
                gate=gate,
                tags={**tags, "lineage.mlflow_run_id": run_id},
            )
    except Exception as err:  # noqa: BLE001 - classified, then re-raised naming the store
        if access.is_refusal(err):
            raise access.explain(err, access.account(), f"register {reg['model_name']} on {redact(uri)}") from None
        if isinstance(err, TwinflowError) or not is_transient(err):
            raise
        raise TransientFault(
            f"MLflow at {redact(uri)} failed during registration: "
            f"{type(err).__name__}: {redact(str(err).splitlines()[0])[:200]}"
        ) from err
    log(f"{result.name} v{result.version}: gate {result.verdict.label}; {result.decision}")
    return {
        "tracking_uri": redact(uri),
        "mlflow_run_id": run_id,
        "experiment_id": experiment_id,
        "model_name": result.name,
        "version": result.version,
        "created": result.created,
        "verdict": result.verdict.label,
        "reasons": result.verdict.reasons,
        "promoted": result.promoted,
        "champion": result.champion,
        "aliases": result.aliases,
        "decision": result.decision,
        "scores": scores,
        "seconds": round(time.monotonic() - start, 2),
    }


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
            record = _set_champion(
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

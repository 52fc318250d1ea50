"""The pipeline's last step: track the run in MLflow and register its generator as a gated model version.

Rules (promote, rollback and the champion history are flows/registry.py's):
- every new version gets alias `challenger` and tags with its scores, the gate verdict and its reasons;
- `champion` moves only when the gate passes and the version is not worse than the current champion by
  more than `gate.champion_margin`;
- registering the same weights with the same scores twice creates no second version (tag `registration_key`).
MLflow is imported where a version is created (it takes seconds to import).
"""

# Lazy imports: mlflow
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import glob
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flows import access, dvc_ops, registry, release_lock, tracking
from flows.faults import StageFailed, TransientFault, is_transient
from flows.gating import GateConfig, Verdict, check_gate, compare_to_champion, ratio_values
from flows.model_card import lean_version
from flows.params import Params
from flows.quiet import mlflow_registration_chatter_muted
from flows.tracking import mlflow_key
from twinflow_core.errors import TwinflowError
from twinflow_core.files import check_finite_weights
from twinflow_core.redaction import redact

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
        all_tags["gate.ratio"] = json.dumps({r.metric: r.min for r in gate.ratios}, sort_keys=True)
        all_tags.update({mlflow_key(k): f"{v:.4f}" for k, v in ratio_values(scores, gate).items()})
    all_tags.update({f"score.{mlflow_key(k)}": f"{v:.6g}" for k, v in scores.items() if k in gate.gated_metrics})
    with mlflow_registration_chatter_muted():  # "Creating a new version...", printed even before a refusal
        mv = mlflow.register_model(model_uri, name, tags={k: redact(str(v)) for k, v in all_tags.items()})
    version = str(mv.version)
    # register_model may return before the version is READY on a server; aliases need it READY.
    for _ in range(120):
        if client.get_model_version(name, version).status == "READY":
            break
        time.sleep(0.5)
    client.set_registered_model_alias(name, registry.CHALLENGER, version)
    return _decide_champion(client, name, version, scores, verdict, gate)


def _decide_champion(client, name, version, scores, verdict, gate) -> Registration:
    with release_lock.release_lock(client, name):  # the champion read here must still be it when we move it
        return _decide_champion_locked(client, name, version, scores, verdict, gate)


def _decide_champion_locked(client, name, version, scores, verdict, gate) -> Registration:
    current = registry.champion_version(client, name)
    if not verdict.passed:
        decision = f"not promoted: gate failed ({verdict.text()})"
        promoted = False
    elif current is None:
        decision, promoted = "promoted: gate passed, no previous champion", True
    else:
        against = compare_to_champion(scores, registry.scores_of(current), gate)
        promoted = against.passed
        decision = (
            f"promoted: gate passed and {against.text()}"
            if promoted
            else f"not promoted: worse than champion v{current.version} ({against.text()})"
        )
    if promoted:
        registry.set_champion(client, name, version, "register", reason=decision, verdict=verdict.label, forced=False)
    client.set_model_version_tag(name, version, "champion.decision", decision)
    champ = registry.champion_version(client, name)
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
    champ = registry.champion_version(client, version.name)
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
    run_params = Params.read(root / "params.yaml")  # the flow's own parse when it wrote the file
    params = run_params.tree
    reg = run_params.section("register", REGISTER_DEFAULTS)
    gate = run_params.gate
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
        client = registry.client_for(uri)
        existing = registry.find_registered(client, reg["model_name"], key)
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

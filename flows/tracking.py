"""MLflow tracking for pipeline runs: where the store is, whether it answers, and one run per pipeline run
(params, metrics from metrics/eval.json, artifacts, lineage tags, and the generator as a pyfunc model).

Default store: `sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts` (both git-ignored).
A tracking server is chosen by URI: `MLFLOW_TRACKING_URI`, or `register.tracking_uri` in params.yaml.
mlflow, requests and numpy are imported inside functions: they take seconds to import, and the command line
imports this module to check a server before anything runs.
"""

# Lazy imports: mlflow, numpy, requests
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from flows.dotted import flatten
from flows.faults import TransientFault
from flows.metrics_files import timing_path
from flows.quiet import mlflow_advice_muted
from twinflow_core.errors import ConfigError, TrackingError
from twinflow_core.redaction import redact

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CORE_DIR = Path(__file__).resolve().parents[1] / "twinflow_core"


def resolve_tracking_uri(repo: str | Path, params: dict | None = None, explicit: str | None = None) -> str:
    """Explicit argument, then $MLFLOW_TRACKING_URI, then params `register.tracking_uri`, then sqlite."""
    configured = ((params or {}).get("register") or {}).get("tracking_uri") or ""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or configured
    return uri or f"sqlite:///{Path(repo).resolve() / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def tls_verify() -> bool | str:
    """What MLflow's own client checks a server's certificate against: MLFLOW_TRACKING_SERVER_CERT_PATH (the
    team's CA), else the system's, unless MLFLOW_TRACKING_INSECURE_TLS=true."""
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    if cert:
        return cert
    return os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() not in ("true", "1")


STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def check_store_kind(uri: str) -> None:
    """A tracking URI names a database or an MLflow server; anything else (ftp://, a plain folder, which MLflow
    keeps only as a read-only legacy store) is a configuration error, not a server that is down."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri or uri.startswith("sqlite:") else ""
    if scheme == "" or scheme == "file":
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return
        raise ConfigError(
            f"MLflow store {redact(uri)}: a folder is not a tracking store; give a database, "
            f"e.g. sqlite:///{Path(uri.removeprefix('file://')).absolute() / 'mlflow.db'}"
        )
    if scheme not in STORE_SCHEMES:
        raise ConfigError(
            f"MLflow store {redact(uri)}: scheme {scheme!r} is not a tracking store (sqlite:///PATH, "
            f"postgresql://..., http(s)://SERVER)"
        )


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the URI in the message, if a tracking server does not answer /health, or does not accept
    this client's login (MLFLOW_TRACKING_USERNAME / _PASSWORD, or _TOKEN) on a call that needs one."""
    check_store_kind(uri)
    if is_local_store(uri):
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :])
            if not db.parent.is_dir():
                raise ConfigError(f"MLflow store {redact(uri)}: folder {db.parent} does not exist")
            if db.is_dir() or (db.is_file() and db.stat().st_size and db.open("rb").read(16) != b"SQLite format 3\x00"):
                raise ConfigError(f"MLflow store {redact(uri)}: {db} is not an SQLite database")
        return
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s, verify=tls_verify())
    except requests.exceptions.SSLError as err:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)}: TLS check failed ({_ssl_reason(err)}); point "
            "MLFLOW_TRACKING_SERVER_CERT_PATH at the team's CA certificate"
        ) from None
    except requests.RequestException as err:
        why = (
            "connection refused"
            if "refused" in str(err).lower()
            else "timed out"
            if isinstance(err, requests.Timeout)
            else type(err).__name__
        )
        raise TransientFault(
            f"MLflow tracking server {redact(uri)} is unreachable ({why}); nothing was registered "
            "and the stage outputs are kept: run again once it is back (cached stages are "
            "skipped, the model is registered once)"
        ) from None
    if response.status_code >= 500:
        raise TransientFault(f"MLflow tracking server {redact(uri)} answered {response.status_code} on /health")
    if response.status_code == 400 and "HTTPS server" in response.text:
        raise ConfigError(
            f"MLflow tracking server {redact(uri)} speaks TLS only: use {redact(uri).replace('http://', 'https://', 1)}"
        )
    if response.status_code != 200:
        raise ConfigError(f"{redact(uri)} answered {response.status_code} on /health: is it an MLflow server?")
    check_login(uri)


def _ssl_reason(err: Exception) -> str:
    text = str(err)
    for mark in ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "hostname mismatch", "self-signed"):
        if mark in text:
            return mark.replace("_", " ").lower()
    return type(err).__name__


def login_auth() -> dict:
    """The headers MLflow's client sends: a bearer token, else basic auth from the environment."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def check_login(uri: str, timeout_s: float = 60.0) -> None:
    """One authenticated read (search one experiment): /health answers anyone, this answers 401 to a wrong login,
    so a wrong password is one line now rather than a traceback inside a stage later."""
    import requests

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    try:
        response = requests.get(
            uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            headers=login_auth(),
            timeout=timeout_s,
            verify=tls_verify(),
        )
    except requests.RequestException as err:
        raise TransientFault(
            f"MLflow tracking server {redact(uri)}: login check failed ({type(err).__name__})"
        ) from None
    if response.status_code == 401:
        if not login_auth() and "@" not in uri:
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} requires a login: set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            )
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} refused account {user!r}: wrong user name or "
            "password (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        )
    if response.status_code == 403:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)}: account {user!r} may not read experiments "
            f"({response.text.strip()[:80]})"
        )


def hide_run_links_with_credentials(uri: str) -> None:
    """MLflow prints "View run ... at: <tracking URI>/#/..." to stdout when a run ends, the URI as given, a
    `user:password@` part included (found by the planted-credentials run, tests/test_pipeline_e2e.py). With such
    a URI those lines are switched off; `twinflow run` prints the UI's address itself, masked."""
    if redact(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def configure(uri: str) -> None:
    """Point mlflow (tracking and registry) at `uri`. The client's own HTTP retries are cut short
    (Prefect retries the whole registration with backoff), so a down server fails in seconds."""
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    hide_run_links_with_credentials(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def ensure_experiment(name: str, repo: str | Path, uri: str) -> str:
    """The experiment's id; a local store keeps its artifacts in <repo>/mlartifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (Path(repo).resolve() / "mlartifacts").as_uri() if is_local_store(uri) else None
    return client.create_experiment(name, artifact_location=location)


def mlflow_key(name: str) -> str:
    """MLflow names allow [/\\w.\\- :]; '@' (as in geneval-shapes/overall@1nfe) becomes '_at_',
    any other character outside that set '_'."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def read_scores(path: str | Path) -> dict[str, float]:
    """Numeric leaves of metrics/eval.json, nested keys joined with '/' (flat names stay as written), and of its
    wall-clock sibling metrics/eval.timing.json when there (flows/metrics_files.py timing_path)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: evaluation metrics not found (did the evaluate stage run?)")
    data = json.loads(path.read_text())
    timing = timing_path(path)
    if timing.is_file() and isinstance(data, dict):
        try:
            data = {**json.loads(timing.read_text()), **data}
        except (OSError, ValueError) as err:  # timings are informative only: a damaged file must not stop a release
            print(f"warning: {timing}: wall-clock metrics not read ({err}); scores unaffected", file=sys.stderr)

    def walk(node: Any, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if isinstance(node, dict):
            for k, v in node.items():
                out.update(walk(v, f"{prefix}/{k}" if prefix else str(k)))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix] = float(node)
        return out

    return walk(data, "")


def git_state(repo: str | Path) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "none"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"lineage.git_commit": commit, "lineage.git_dirty": str(dirty).lower()}


def lineage_tags(hashes: dict[str, dict[str, str]], outputs: dict[str, str]) -> dict[str, str]:
    """Tags naming the exact data, base, checkpoint and metrics (dvc.lock md5s) a version came from.
    `outputs` maps a lineage name to its path prefix in dvc.lock, e.g. {'data': 'data/prepared'}."""
    tags = {}
    for label, prefix in outputs.items():
        for outs in hashes.values():
            for path, digest in outs.items():
                if path.rstrip("/") == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
                    tags[f"lineage.{label}_md5"] = digest
                    tags[f"lineage.{label}_path"] = path
    return tags


def registration_key(tags: dict[str, str], checkpoint_dir: Path, metrics_path: Path) -> str:
    """Identity of what is registered: same weights and same scores => same key => no second version.
    From dvc.lock md5s when there, else from the files themselves."""
    ckpt = tags.get("lineage.checkpoint_md5") or _hash_tree(checkpoint_dir)
    metrics = tags.get("lineage.metrics_md5") or _hash_tree(metrics_path)
    return hashlib.sha256(f"{ckpt}:{metrics}".encode()).hexdigest()[:32]


def _hash_tree(path: Path) -> str:
    digest = hashlib.md5()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def redacted_copy(path: Path, scratch: Path) -> Path:
    """`path`, or a copy of it under `scratch` (same name) with its credentials masked: a params.yaml whose
    register.tracking_uri holds `user:password@` is the user's own file, but its copy in MLflow must not hold it."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return path  # binary (a grid image): nothing a URI or a secret variable could be spelt in
    masked = redact(text)
    if masked == text:
        return path
    copy = scratch / path.name
    copy.write_text(masked, encoding="utf-8")
    return copy


def log_pipeline_run(
    *,
    repo: Path,
    experiment_id: str,
    run_name: str,
    params: dict,
    scores: dict[str, float],
    tags: dict[str, str],
    artifacts: list[tuple[Path, str]],
    checkpoint_dir: Path,
    log_model: bool,
) -> tuple[str, str | None]:
    """Create the run for this pipeline run; returns (run_id, model_uri or None)."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flatten(params).items()}
    tags = {k: redact(str(v)) for k, v in tags.items()}  # tags, like params, never hold a credential
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        # log_params takes at most 100 at a time
        # params pass through the redaction helper: a tracking URI or endpoint with credentials is kept, masked
        items = [(mlflow_key(k), redact(str(v))[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        metrics = {mlflow_key(k): v for k, v in scores.items()}
        with tempfile.TemporaryDirectory(prefix="twinflow-redacted-") as scratch:
            for path, dest in artifacts:
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=dest)
                elif path.is_file():
                    mlflow.log_artifact(str(redacted_copy(path, Path(scratch))), artifact_path=dest)
        model_uri = model_id = None
        if log_model:
            # An unnamed string column: a plain list of prompts and a DataFrame both pass the schema.
            signature = ModelSignature(
                inputs=Schema([ColSpec("string")]),
                outputs=Schema([TensorSpec(np.dtype("uint8"), (-1, -1, -1, 3))]),
                params=ParamSchema([ParamSpec("nfe", "long", 1), ParamSpec("seed", "long", 0)]),
            )
            with mlflow_advice_muted():  # the signature is explicit: its type-hint advice does not apply
                info = mlflow.pyfunc.log_model(
                    name="generator",
                    python_model=str(PYFUNC_CODE),
                    artifacts={"checkpoint": str(checkpoint_dir)},
                    code_paths=[str(CORE_DIR)],
                    signature=signature,
                    pip_requirements=_pip_requirements(),
                )
            model_uri, model_id = info.model_uri, info.model_id
        # Logged once, after the model: log_model links the run's metrics logged before it to the model by
        # fetching each one's history (one authenticated request per metric on a server); logged here with the
        # model's id, they are the run's and the model's in one batch.
        mlflow.log_metrics(metrics, model_id=model_id)
        return run.info.run_id, model_uri


def _pip_requirements() -> list[str]:
    """The model's runtime needs, pinned to this environment (spares MLflow's slow inference)."""
    reqs = []
    for dist in ("torch", "safetensors", "numpy", "pandas", "mlflow"):
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except Exception:  # noqa: BLE001 - a missing optional dist just isn't listed
            pass
    return reqs

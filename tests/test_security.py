"""Security rules: weights load only from safetensors (state files with torch.load(weights_only=True)); a crafted
pickle is refused without running; credentials are masked wherever a URI or an error is printed or logged."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
from support import mlflow_db

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this runs code: it writes a marker file (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_no_unsafe_deserialisation_in_the_code():
    """Every torch.load passes weights_only=True; no pickle.load(s), no np.load with allow_pickle=True."""
    bad = []
    for path in sorted([*(REPO / "flows").rglob("*.py"), *(REPO / "twinflow_core").rglob("*.py")]):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in m.group(0):
                bad.append(f"{path.relative_to(REPO)}: {m.group(0)[:60]}")
        for pattern in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"cloudpickle", r"joblib\.load"):
            bad += [f"{path.relative_to(REPO)}: {pattern}" for _ in re.finditer(pattern, text)]
    assert not bad, bad


def test_a_crafted_pickle_in_place_of_safetensors_is_refused_without_running(tmp_path):
    from support.pipeline import make_checkpoint

    from twinflow_core.checkpoint import load_generator
    from twinflow_core.errors import CheckpointError

    ckpt = make_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "marker"
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="pickled .pt/.ckpt files are refused"):
        load_generator(ckpt)
    assert not marker.exists()


def test_a_crafted_pickle_as_a_training_state_is_refused_without_running(tmp_path):
    """The resume path loads states with weights_only=True (twinflow_core/training/run.py); so does Lightning."""
    import torch

    marker = tmp_path / "marker"
    state = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "evil": _Payload(marker)}, state)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(state, weights_only=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, secret",
    [
        ("http://admin:hunter2-secret@mlflow:5000", "hunter2-secret"),
        ("https://user:p%40ss@host/api?x=1", "p%40ss"),
        ("https://ghp_0123456789abcdefghijklmn@github.com/org/repo", "ghp_0123456789abcdefghijklmn"),
        ("s3://bucket/key?X-Amz-Signature=deadbeefcafe&X-Amz-Credential=AKIAEXAMPLE", "deadbeefcafe"),
        ("http://host/?token=tok-123456", "tok-123456"),
    ],
)
def test_redaction_masks_credentials_in_uris(text, secret):
    from twinflow_core.redaction import redact

    out = redact(f"error at {text} (retry)")
    assert secret not in out and "***" in out and out.endswith("(retry)")


def test_secret_environment_values_are_masked(monkeypatch):
    from twinflow_core.redaction import redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "correct-horse-battery")
    out = redact("denied: key wJalrXUtnFEMI/K7MDENG, password correct-horse-battery")
    assert "wJalrXUtnFEMI" not in out and "correct-horse" not in out


def test_a_tracking_uri_with_credentials_is_redacted_in_the_error_line(tmp_path, capsys):
    from support.s3 import free_port

    from flows.cli import main

    uri = f"http://admin:planted-pw-9931@127.0.0.1:{free_port()}"
    (tmp_path / "params.yaml").write_text("gate: {min: {a: 1}}\n")
    assert main(["models", "--tracking-uri", uri, "--params", str(tmp_path / "params.yaml"), "list"]) == 17
    err = capsys.readouterr().err
    assert "planted-pw-9931" not in err and "http://admin:***@127.0.0.1" in err


def test_the_secret_grep_finds_a_planted_value_in_a_file_and_in_a_git_commit(tmp_path):
    """The grep the planted-credentials run relies on (tests/test_pipeline_e2e.py) is not blind: a secret in a
    plain file, and one committed to a git repository (whose objects are compressed), are both found."""
    import subprocess

    from support.planted_secrets import PASSWORD, PLANTED, leaks_in_files, leaks_in_text

    secret = PLANTED["AWS_SECRET_ACCESS_KEY"]
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "params.yaml").write_text(f"register: {{tracking_uri: http://u:{PASSWORD}@h}}\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config").write_text(f"key = {secret}\n")
    for args in (
        ["init", "-q"],
        ["add", "config"],
        ["-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    (repo / "config").unlink()  # gone from the work tree, still in the repository
    found = leaks_in_files(tmp_path)
    assert found == {str(tmp_path / "plain" / "params.yaml"): [PASSWORD], f"git objects of {repo}": [secret]}
    assert leaks_in_text(log=f"token {PLANTED['MLFLOW_TRACKING_TOKEN']}") == {"log": [PLANTED["MLFLOW_TRACKING_TOKEN"]]}


def test_a_password_the_user_put_in_params_yaml_reaches_mlflow_masked(tmp_path):
    """register.tracking_uri in params.yaml with `user:password@` (the user's own file, so it holds it): the
    registration's MLflow params and its params.yaml artifact carry the URI masked, and nothing else the
    registration writes (the sqlite store, mlartifacts/) holds the password."""
    import yaml
    from mlflow.tracking import MlflowClient
    from support.pipeline import make_outputs, scores
    from support.planted_secrets import PASSWORD, leaks_in_files

    from flows import register_step

    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["register"]["tracking_uri"] = f"http://team:{PASSWORD}@mlflow.example:5000"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")  # --tracking-uri wins over the file's server
    result = register_step.register_outputs(root, tracking_uri=uri)
    client = MlflowClient(uri, uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.params["register.tracking_uri"] == "http://team:***@mlflow.example:5000"
    logged = (Path(client.download_artifacts(run.info.run_id, "params.yaml", str(tmp_path / "dl")))).read_text()
    assert "http://team:***@mlflow.example:5000" in logged and PASSWORD not in logged
    assert yaml.safe_load(logged)["gate"] == params["gate"]  # the rest of the file as it was
    assert leaks_in_files(tmp_path) == {str(root / "params.yaml"): [PASSWORD]}  # only where the user put it


@pytest.mark.parametrize(
    "text, what",
    [
        ("http://u:pw-123456@host:5000", "a password in a URI"),
        ("postgresql://u:pw-123456@127.0.0.1/db", "a password in a URI"),
        ("https://ghp_abcdefghijklmnopqrstuvwxyz@host/x", "a token in a URI"),
        ("https://host/x?sig=abcdef&a=1", "a token in a URI's query"),
        ("http://127.0.0.1:5000", None),
        ("sqlite:///mlflow.db", None),
        ("http://user@host", None),
    ],
)
def test_credential_in_says_which_kind_of_credential_a_value_holds(text, what):
    from twinflow_core.redaction import credential_in

    found = credential_in(text)
    assert (found is None) if what is None else found.startswith(what), found


def test_any_value_of_a_key_named_like_a_secret_is_a_credential():
    from twinflow_core.redaction import credential_in

    assert credential_in("plain-text", "data.imagefolder.storage_options.secret") == "a secret (the key 'secret')"
    assert credential_in("plain-text", "data.imagefolder.storage_options.endpoint") is None
    assert credential_in("", "x.password") is None


def test_a_secret_environment_value_inside_a_value_is_a_credential(monkeypatch):
    from twinflow_core.redaction import credential_in

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abcdefgh12345678")
    assert credential_in("s3://bucket/abcdefgh12345678") == "the value of $AWS_SECRET_ACCESS_KEY"


def test_the_log_filter_masks_every_record_a_handler_receives():
    """RedactingFilter on a handler (the flow puts it on Prefect's console and API handlers): the message with its
    arguments merged is masked before any formatter or the API sees it."""
    import io
    import logging

    from twinflow_core.redaction import RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("twinflow-test-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("overrides: %s", {"register.tracking_uri": "http://u:pw-planted-1@host"})
        logger.warning("plain %d", 3)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "overrides: {'register.tracking_uri': 'http://u:***@host'}\nplain 3\n"

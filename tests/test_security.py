"""Security rules: weights load only from safetensors (state files with torch.load(weights_only=True)); a crafted
pickle is refused without running; credentials are masked wherever a URI or an error is printed or logged."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("text, secret", [
    ("http://admin:hunter2-secret@mlflow:5000", "hunter2-secret"),
    ("https://user:p%40ss@host/api?x=1", "p%40ss"),
    ("https://ghp_0123456789abcdefghijklmn@github.com/org/repo", "ghp_0123456789abcdefghijklmn"),
    ("s3://bucket/key?X-Amz-Signature=deadbeefcafe&X-Amz-Credential=AKIAEXAMPLE", "deadbeefcafe"),
    ("http://host/?token=tok-123456", "tok-123456"),
])
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
    from flows.cli import main
    from support.s3 import free_port

    uri = f"http://admin:planted-pw-9931@127.0.0.1:{free_port()}"
    (tmp_path / "params.yaml").write_text("gate: {min: {a: 1}}\n")
    assert main(["models", "--tracking-uri", uri, "--params", str(tmp_path / "params.yaml"), "list"]) == 17
    err = capsys.readouterr().err
    assert "planted-pw-9931" not in err and "http://admin:***@127.0.0.1" in err


"""`twinflow models rollback` when the champion before the current one was deleted from the registry: one line
naming it, exit 14, the champion unchanged (it was an MlflowException traceback)."""

from __future__ import annotations

import pytest
from support import mlflow_db
from support.pipeline import make_outputs, scores

from flows import register_step
from flows.cli import main

NAME = "tiny-gen"
pytestmark = pytest.mark.slow  # two registrations in a sqlite store (~1 min on a busy 2-core box)


def test_rollback_to_a_deleted_version_is_one_line(tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=0)
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    assert register_step.register_outputs(root, tracking_uri=uri)["promoted"]
    make_outputs(root, scores(0.9, 90.0), seed=1)
    assert register_step.register_outputs(root, tracking_uri=uri)["champion"] == "2"
    client = MlflowClient(uri, registry_uri=uri)
    client.delete_model_version(NAME, "1")
    capsys.readouterr()
    code = main(["models", "--tracking-uri", uri, "--params", str(root / "params.yaml"), "rollback", NAME])
    err = capsys.readouterr().err
    assert code == 14, err
    lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln]
    assert lines == [
        f"twinflow models: error: {NAME}: v1, the champion before v2, was deleted from the registry; "
        f"promote the version you want instead (twinflow models promote {NAME} VERSION)"
    ]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"

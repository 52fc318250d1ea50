"""Registration against a real MLflow store (sqlite; a loopback server in the slow test): versions,
idempotency, gate verdict tags, aliases, the champion margin, promote/force/rollback through the
`twinflow models` command, and a registered version that generates from its safetensors weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("twinflow_core.checkpoint", reason="needs the training helper's save/load_generator")

from support import mlflow_db  # noqa: E402
from support.pipeline import CAPTIONS, make_outputs, scores, start_mlflow_server, stop  # noqa: E402

from flows import register_step  # noqa: E402
from flows.cli import main  # noqa: E402

NAME = "tiny-gen"


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, uri)


def _aliases(client, version):
    return sorted(client.get_model_version(NAME, str(version)).aliases)


def test_register_gate_aliases_idempotency_and_cli(tmp_path, capsys):
    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=0)
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    client = _client(uri)

    # v1 passes the gate, no champion yet -> champion and challenger
    r1 = register_step.register_outputs(root, flow_run_id="flow-1", tracking_uri=uri)
    assert (r1["version"], r1["created"], r1["verdict"], r1["promoted"]) == ("1", True, "passed", True)
    assert _aliases(client, 1) == ["challenger", "champion"]
    mv = client.get_model_version(NAME, "1")
    assert mv.tags["gate.verdict"] == "passed"
    assert mv.tags["lineage.prefect_flow_run_id"] == "flow-1"
    assert mv.tags["score.geneval-shapes/overall_at_1nfe"] == "0.8"
    run = client.get_run(r1["mlflow_run_id"])
    assert run.data.metrics["geneval-shapes/overall_at_1nfe"] == pytest.approx(0.8)
    assert run.data.params["gate.champion_margin"] == "0.05"
    logged = {a.path for a in client.list_artifacts(r1["mlflow_run_id"], "reports")}
    assert {"reports/samples_1nfe.png", "reports/data"} <= logged

    # the same weights and scores again: a new MLflow run, no second version
    r1b = register_step.register_outputs(root, flow_run_id="flow-2", tracking_uri=uri)
    assert (r1b["version"], r1b["created"]) == ("1", False)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    assert client.get_run(r1b["mlflow_run_id"]).data.tags["registered_version"] == "1"

    # v2 fails the gate: challenger with its verdict and reasons, champion unchanged
    make_outputs(root, scores(0.3, 80.0), seed=1)
    r2 = register_step.register_outputs(root, tracking_uri=uri)
    assert (r2["version"], r2["verdict"], r2["promoted"], r2["champion"]) == ("2", "failed", False, "1")
    mv2 = client.get_model_version(NAME, "2")
    assert mv2.tags["gate.verdict"] == "failed"
    assert "geneval-shapes/overall@1nfe 0.3 < 0.5" in mv2.tags["gate.reasons"]
    assert _aliases(client, 2) == ["challenger"] and _aliases(client, 1) == ["champion"]

    # v3 passes the gate but is worse than the champion by more than the 5% margin: not promoted
    make_outputs(root, scores(0.7, 80.0), seed=2)
    r3 = register_step.register_outputs(root, tracking_uri=uri)
    assert (r3["verdict"], r3["promoted"], r3["champion"]) == ("passed", False, "1")
    assert "worse than champion v1" in r3["decision"]

    # v4 within the margin: promoted
    make_outputs(root, scores(0.78, 81.0), seed=3)
    r4 = register_step.register_outputs(root, tracking_uri=uri)
    assert (r4["version"], r4["promoted"], r4["champion"]) == ("4", True, "4")

    # release manager: list, promote a failing version (refused, then forced with a reason), rollback
    args = ["models", "--tracking-uri", uri, "--params", str(root / "params.yaml")]
    assert main(args + ["list", NAME]) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "failed" in out and "geneval-shapes/overall@1nfe=0.3" in out

    assert main(args + ["promote", NAME, "2"]) == 3
    assert "fails the gate" in capsys.readouterr().err
    assert main(args + ["promote", NAME, "2", "--force"]) == 10
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(args + ["promote", NAME, "2", "--force", "--reason", "hotfix for demo"]) == 0
    assert _aliases(client, 2) == ["champion"]  # challenger stays on the newest version, v4
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion.forced"] == "true" and tags["promotion.reason"] == "hotfix for demo"

    assert main(args + ["rollback", NAME]) == 0
    assert "from v2 to v4" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "4"
    assert main(args + ["rollback", NAME]) == 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert main(args + ["rollback", NAME]) == 14
    assert "first champion" in capsys.readouterr().err

    # promote re-checks the gate with passing scores: no force needed
    assert main(args + ["promote", NAME, "3"]) == 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"


def test_champion_generates_from_safetensors(tmp_path):
    """models:/<name>@champion loads with pyfunc and turns prompts into images at 1 NFE, equal to the
    checkpoint's own generator; the stored model holds no pickle."""
    import mlflow

    from twinflow_core.checkpoint import load_generator

    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=5)
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    register_step.register_outputs(root, tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    images = model.predict(CAPTIONS[:3])
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 3)
    expected = load_generator(root / "checkpoints" / "twinflow").generate(CAPTIONS[:3], nfe=1, seed=0)
    np.testing.assert_array_equal(images, expected)
    import pandas as pd

    df_images = model.predict(pd.DataFrame({"prompt": CAPTIONS[:2]}), params={"seed": 1})
    assert df_images.shape == (2, 8, 8, 3)
    assert not np.array_equal(df_images, images[:2])  # another seed, other noise
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path / "dl"))
    from pathlib import Path

    files = [p.name for p in Path(local).rglob("*") if p.is_file()]
    assert "model.safetensors" in files and "model.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]


@pytest.mark.slow
def test_models_command_against_tracking_server(tmp_path, capsys):
    """The same registry operations against `mlflow server` on 127.0.0.1, and a clear error when it is down."""
    uri, proc = start_mlflow_server(tmp_path / "server")
    try:
        root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=0)
        r1 = register_step.register_outputs(root, tracking_uri=uri)
        make_outputs(root, scores(0.9, 90.0), seed=1)
        r2 = register_step.register_outputs(root, tracking_uri=uri)
        assert (r1["version"], r2["version"], r2["champion"]) == ("1", "2", "2")
        args = ["models", "--tracking-uri", uri, "--params", str(root / "params.yaml")]
        assert main(args + ["list"]) == 0
        assert "challenger,champion" in capsys.readouterr().out
        assert main(args + ["rollback", NAME]) == 0
        assert str(_client(uri).get_model_version_by_alias(NAME, "champion").version) == "1"
        import mlflow

        mlflow.set_tracking_uri(uri)
        images = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(["a red circle"])
        assert images.shape == (1, 8, 8, 3)
    finally:
        stop(proc)
    assert main(["models", "--tracking-uri", uri, "list"]) == 17
    assert "unreachable" in capsys.readouterr().err


def test_a_ratio_gate_shows_in_the_verdict_and_the_version_tags(tmp_path):
    gate = {"min": {"geneval-shapes/overall@1nfe": 0.1}, "ratio": {"geneval-shapes/overall@1nfe": 0.9}}
    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=0, gate=gate)
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    r = register_step.register_outputs(root, tracking_uri=uri)
    assert r["verdict"] == "failed"  # the published 0.8 / 0.9 = 0.889 < 0.9, though the minimum holds
    mv = _client(uri).get_model_version(NAME, r["version"])
    assert "ratio/geneval-shapes/overall@1nfe 0.889 ± 0.040 < 0.9" in mv.tags["gate.reasons"]
    assert mv.tags["ratio/geneval-shapes/overall_at_1nfe"] == "0.8889"
    assert mv.tags["score.ratio/geneval-shapes/overall_at_1nfe"] == "0.888889"
    assert json.loads(mv.tags["gate.ratio"]) == {"geneval-shapes/overall@1nfe": 0.9}

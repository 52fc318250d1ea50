"""No remote source writes outside its folder. Each source a generator comes from (an S3 prefix for `twinflow
generate`, `train.init` / `pretrain.init` for the stages, an MLflow artifact, a diffusers pipeline folder's file
list) is given a hostile name: an S3 key with `..` or an absolute path, written with boto3 directly into a moto
server on 127.0.0.1; a model version in a real MLflow store whose files live under such keys, or hold a symbolic
link. Each is refused in one line with the checkpoint exit status (13), before a byte is written: nothing appears
outside, and an earlier fetch is left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import mlflow_db
from tests.support.s3 import SECRET, moto_endpoint, s3_env  # noqa: F401 (fixtures)
from tests.support.training import ROOT, make_dataset, smoke_params, stage_cmd, stage_env

LATENT = {"format": "twinflow-latent-generator/1", "files": {}}  # a latent generator: every file is copied


def hostile_bucket(endpoint: str, bucket: str, prefix: str, bad_key: str, meta: dict | None = None) -> None:
    """s3://bucket/prefix holding model.json, model.safetensors and `bad_key`, written with boto3 directly (the
    project's uploader would never write such a key)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/model.json", Body=json.dumps(meta or LATENT).encode())
    s3.put_object(Bucket=bucket, Key=f"{prefix}/model.safetensors", Body=b"not read")
    s3.put_object(Bucket=bucket, Key=bad_key, Body=b"written outside")


def outside(root: Path, name: str = "evil.txt") -> list[str]:
    return [str(p) for p in Path(root).rglob(name)]


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert SECRET not in proc.stderr + proc.stdout
    return lines[0]


def twinflow(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("bad_key", ["gen/../../evil.txt", "gen//ABS/evil.txt", "gen/sub/../../../evil.txt"])
def test_generate_from_an_s3_prefix_with_a_key_outside_it_is_refused(tmp_path, s3_env, bad_key):
    """`twinflow generate --model s3://...` fetches into a temporary folder (TMPDIR here, two levels below the
    test's folder, so that `..` lands in it): the hostile key is named, exit 13, no evil.txt anywhere."""
    tmpdir = tmp_path / "t1" / "t2"
    tmpdir.mkdir(parents=True)
    bad_key = bad_key.replace("/ABS/", f"{tmp_path}/")  # gen//<tmp_path>/evil.txt: an absolute name below gen/
    hostile_bucket(s3_env, "models", "gen", bad_key)
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_env, "TMPDIR": str(tmpdir)}
    proc = twinflow(
        ["generate", "a red circle", "--model", "s3://models/gen", "--out", str(tmp_path / "g.png")], tmp_path, env
    )
    line = one_line(proc)
    assert proc.returncode == 13, line
    assert line.startswith("twinflow generate: error: generator checkpoint s3://models/gen: file name ")
    assert "would land outside its folder" in line
    assert outside(tmp_path) == [] and not Path("/evil.txt").exists()
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("stage", ["pretrain", "train"])
def test_a_stage_init_from_an_s3_prefix_with_a_key_outside_it_is_refused(tmp_path, s3_env, stage):
    """`python -m flows.stages.<stage> --set <stage>.init=s3://...` (what `twinflow run` and DVC run): the init
    is fetched beside the stage's output; `gen/../../evil.txt` would land two folders up, in the test's folder."""
    work = tmp_path / "w1" / "w2"
    work.mkdir(parents=True)
    params = smoke_params(work, make_dataset(tmp_path / "data"))
    hostile_bucket(s3_env, "bases", "gen", "gen/../../evil.txt")
    env = {**stage_env(), "AWS_ENDPOINT_URL": s3_env}
    proc = subprocess.run(
        stage_cmd(stage, params, f"{stage}.init=s3://bases/gen"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = one_line(proc)
    assert proc.returncode == 13, line
    assert line == (
        f"{stage}: error: generator checkpoint s3://bases/gen: file name '../../evil.txt' would land "
        "outside its folder (an absolute path, a '..', '.' or empty part, or a backslash); refused, "
        "nothing was written"
    )
    assert outside(tmp_path) == [] and not (ROOT / "evil.txt").exists()
    assert not (work / f"{stage}-init").exists() and not (work / f"{stage}-init.partial").exists()


def test_a_pipeline_folder_listing_a_file_outside_it_is_refused(tmp_path, s3_env, monkeypatch):
    """A latent generator's model.json lists its files with their sha256; a listed `../x` would be read (hashed)
    from outside the fetched folder. The fetch is refused naming it, and an earlier fetch is kept."""
    from flows import init_source
    from tests.support.pipeline import make_checkpoint
    from tests.support.s3 import upload
    from twinflow_core.errors import CheckpointError

    good = make_checkpoint(tmp_path / "good")
    upload(s3_env, good, "pipes", "good")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    dest = init_source.fetch("s3://pipes/good", tmp_path / "ckpt" / "train-init")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    (tmp_path / "ckpt" / "secret.txt").write_text("not yours")
    meta = {**LATENT, "files": {"../secret.txt": "0" * 64}}
    hostile_bucket(s3_env, "pipes", "bad", "bad/transformer/config.json", meta=meta)
    with pytest.raises(CheckpointError) as err:
        init_source.fetch("s3://pipes/bad", dest)
    assert str(err.value).startswith("s3://pipes/bad/model.json files: file name '../secret.txt' would land outside")
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def _register(client, name: str, source: str) -> str:
    client.create_registered_model(name)
    return client.create_model_version(name, source).version


def test_an_mlflow_version_whose_artifacts_list_a_key_outside_is_refused(tmp_path, s3_env):
    """A registered version in a real MLflow store (sqlite) whose source is an S3 prefix holding
    `gen/../../evil.txt`: `twinflow generate --model models:/...` lists it before downloading and refuses it."""
    from mlflow.tracking import MlflowClient

    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    hostile_bucket(s3_env, "store", "gen", "gen/../../evil.txt")
    client = MlflowClient(uri, uri)
    version = _register(client, "hostile", "s3://store/gen")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_env, "TMPDIR": str(tmp_path), "MLFLOW_TRACKING_URI": uri}
    proc = twinflow(
        ["generate", "a red circle", "--model", f"models:/hostile/{version}", "--out", str(tmp_path / "g.png")],
        tmp_path,
        env,
    )
    line = one_line(proc)
    assert proc.returncode == 13, line
    assert line.startswith(f"twinflow generate: error: models:/hostile/{version}: the MLflow artifact: file name ")
    assert "'..'" in line and outside(tmp_path) == []


def test_an_mlflow_version_holding_a_symbolic_link_is_refused(tmp_path):
    """A version in a store on this disk whose weights are a symbolic link to a file outside the store (a crafted
    store, or one a second user can write): `train.init=models:/...` refuses it instead of copying what the link
    points at into checkpoints/train-init (which the pipeline then `dvc add`s and pushes)."""
    from flows import register_step
    from flows.pipeline import localise_inits
    from tests.support.pipeline import make_outputs, scores
    from twinflow_core.errors import CheckpointError

    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=5)
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    register_step.register_outputs(root, tracking_uri=uri)
    weights = next((root / "mlartifacts").rglob("model.safetensors"))
    private = tmp_path / "private.key"
    private.write_bytes(b"PRIVATE KEY " * 8)
    weights.unlink()
    weights.symlink_to(private)
    with pytest.raises(CheckpointError) as err:
        localise_inits(root, {"train.init": "models:/tiny-gen@champion"}, uri, lambda line: None)
    assert "model.safetensors: a symbolic link" in str(err.value) and "\n" not in str(err.value)
    leaked = [p for p in (root / "checkpoints").rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert leaked == [] and not (root / "checkpoints" / "train-init").exists()


def test_folder_markers_in_a_bucket_are_not_files_and_do_not_stop_a_fetch(tmp_path, s3_env, monkeypatch):
    """Keys ending in "/" (what a console's "create folder" writes, the prefix itself included) name no file: a
    generator uploaded beside them fetches as before, and no marker becomes a file."""
    import boto3

    from flows import init_source
    from tests.support.pipeline import make_checkpoint
    from tests.support.s3 import upload

    ckpt = make_checkpoint(tmp_path / "gen")
    upload(s3_env, ckpt, "marked", "runs/base")
    s3 = boto3.client("s3", endpoint_url=s3_env)
    for key in ("runs/base/", "runs/base/extra/"):
        s3.put_object(Bucket="marked", Key=key, Body=b"")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    dest = init_source.fetch("s3://marked/runs/base", tmp_path / "ckpt" / "train-init")
    assert sorted(p.name for p in dest.iterdir()) == ["model.json", "model.safetensors", "source.json"]

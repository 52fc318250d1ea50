"""A training stage's init checkpoint from S3 (moto on 127.0.0.1) or from the MLflow registry (models:/...):
fetched into a local folder that DVC can hash, byte for byte, with one-line errors for what is missing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flows import init_source
from tests.support import mlflow_db
from tests.support.pipeline import make_checkpoint, make_outputs, scores
from tests.support.s3 import SECRET, moto_endpoint, s3_env, upload  # noqa: F401 (fixtures)
from tests.support.training import ROOT, make_dataset, smoke_params, stage_cmd, stage_env
from twinflow_core.errors import DataError, TrackingError

NAME = "tiny-gen"  # make_outputs' registered model name


def files_of(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}


def test_s3_init_is_fetched_byte_for_byte_and_names_its_source(tmp_path, s3_env, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "gen", seed=3)
    upload(s3_env, ckpt, "models", "runs/base")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    dest = init_source.fetch("s3://models/runs/base", tmp_path / "checkpoints" / "train-init")
    fetched = files_of(dest)
    source = json.loads(fetched.pop("source.json"))
    assert fetched == files_of(ckpt)
    import hashlib

    assert source == {
        "uri": "s3://models/runs/base",
        "sha256": hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest(),
    }

    # a second fetch of something missing fails in one line and leaves the first fetch as it was
    for ref, expected in [
        ("s3://models/runs/nothing", "s3://models/runs/nothing: missing model.json, model.safetensors"),
        ("s3://no-such-bucket/base", "bucket 'no-such-bucket' does not exist"),
    ]:
        with pytest.raises(DataError) as err:
            init_source.fetch(ref, dest)
        assert expected in str(err.value) and "\n" not in str(err.value) and SECRET not in str(err.value)
        assert files_of(dest) == {**files_of(ckpt), "source.json": dest.joinpath("source.json").read_bytes()}
    assert not (dest.parent / "train-init.partial").exists()


def test_pipeline_fetches_a_registered_model_into_the_stage_folder(tmp_path):
    """models:/<name>@champion -> checkpoints/train-init, and the override DVC sees is that local folder."""
    from flows import register_step
    from flows.pipeline import localise_inits

    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=5)
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    register_step.register_outputs(root, tracking_uri=uri)
    logged = []
    parsed = localise_inits(root, {"train.init": f"models:/{NAME}@champion", "train.steps": 3}, uri, logged.append)
    assert parsed == {"train.init": "checkpoints/train-init", "train.steps": 3}
    fetched = files_of(root / "checkpoints" / "train-init")
    assert json.loads(fetched.pop("source.json"))["uri"] == f"models:/{NAME}@champion"
    assert fetched == files_of(root / "checkpoints" / "twinflow")
    assert logged == [f"train.init: fetching models:/{NAME}@champion into checkpoints/train-init"]
    # a local init is left alone, and nothing is fetched
    assert localise_inits(root, {"train.init": "checkpoints/base"}, uri, logged.append) == {
        "train.init": "checkpoints/base"
    }

    with pytest.raises(TrackingError) as err:  # the registry is the input at fault (exit 14)
        localise_inits(root, {"train.init": "models:/no-such-model@champion"}, uri, logged.append)
    assert str(err.value).startswith(f"init models:/no-such-model@champion: not found in the MLflow store {uri}")
    from flows.faults import TransientFault
    from tests.support.s3 import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(TransientFault) as err:
        localise_inits(root, {"train.init": f"models:/{NAME}@champion"}, dead, logged.append)
    assert str(err.value) == (
        f"init models:/{NAME}@champion: the MLflow tracking server {dead} is unreachable; "
        "nothing was fetched or trained: run again once it is back"
    )
    assert (root / "checkpoints" / "train-init" / "model.safetensors").is_file()  # the earlier fetch is kept


@pytest.mark.slow
def test_train_stage_runs_from_an_s3_base(tmp_path, s3_env):
    """The stage entry point with train.init=s3://...: fetched beside the stage's output, trained from, and a
    missing bucket is the stage's one-line error."""
    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data)
    env = {**stage_env(), "AWS_ENDPOINT_URL": s3_env}
    pre = subprocess.run(stage_cmd("pretrain", params), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert pre.returncode == 0, pre.stderr[-3000:]
    upload(s3_env, tmp_path / "base", "bases", "shapes/v1")
    tr = subprocess.run(
        stage_cmd("train", params, "train.init=s3://bases/shapes/v1"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tr.returncode == 0, tr.stderr[-3000:]
    fetched = tmp_path / "train-init"
    assert (fetched / "model.safetensors").read_bytes() == (tmp_path / "base" / "model.safetensors").read_bytes()
    meta = json.loads((tmp_path / "twinflow" / "model.json").read_text())
    assert meta["extra"]["init"] == str(fetched) and meta["extra"]["steps"] == 4

    bad = subprocess.run(
        stage_cmd("train", params, "train.init=s3://gone/shapes/v1"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 12
    assert bad.stderr.strip().splitlines() == [
        f"train: error: s3://gone/shapes/v1: bucket 'gone' does not exist at {s3_env}"
    ]


def test_a_latent_generator_is_fetched_whole_and_checked_file_by_file(tmp_path, s3_env, monkeypatch):
    """A latent generator is a diffusers pipeline folder (VAE, text encoders, tokenizers, transformer): fetching
    it (an S3 init, `twinflow generate --model models:/...`) copies every file, checks each against the sha256
    model.json lists, and a damaged one is a one-line error naming it, with the earlier fetch left as it was."""
    pytest.importorskip("diffusers")
    from twinflow_core.adapters.generator_files import wrap_base
    from twinflow_core.adapters.tiny import save_tiny_sd3_pipeline
    from twinflow_core.checkpoint import load_generator
    from twinflow_core.data import shapes
    from twinflow_core.errors import CheckpointError

    folder = wrap_base(save_tiny_sd3_pipeline(tmp_path / "sd3-tiny", shapes.vocabulary()), "sd3", 32, 48)
    tree = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert any(name.startswith("vae/") for name in tree)
    upload(s3_env, folder, "models", "sd3-tiny")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    dest = init_source.fetch("s3://models/sd3-tiny", tmp_path / "checkpoints" / "train-init")
    fetched = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert fetched.pop("source.json") and fetched == tree
    images = load_generator(dest).generate(["a photo of a red circle"], nfe=1, seed=0)
    assert images.shape == (1, 32, 32, 3) and images.dtype.name == "uint8"

    vae = next(n for n in tree if n.startswith("vae/") and n.endswith(".safetensors"))
    damaged = bytearray(tree[vae])
    damaged[-1] ^= 0xFF
    (folder / vae).write_bytes(bytes(damaged))
    upload(s3_env, folder, "models", "sd3-damaged")
    with pytest.raises(CheckpointError) as err:
        init_source.fetch("s3://models/sd3-damaged", dest)
    assert str(err.value) == f"s3://models/sd3-damaged/{vae}: sha256 differs from model.json's (damaged or changed)"
    assert {
        p.relative_to(dest).as_posix(): p.read_bytes()
        for p in dest.rglob("*")
        if p.is_file() and p.name != "source.json"
    } == tree

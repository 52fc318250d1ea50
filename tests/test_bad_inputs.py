"""The bad-input catalogue: every kind of bad input a user can hand the pipeline, as one table.

Each row runs the real entry point (the `twinflow` command, a stage's main, or the loader the stages call, whose
error the CLI prints with flows.cli.error_line) and checks: one line on stderr naming what and where, the exit
family of twinflow_core/errors.py, and every file that existed before left byte-for-byte as it was (params.yaml
first of all). docs/reliability.md lists the same ids (tests/test_reliability_doc.py keeps them equal).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from support import mlflow_db

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    id: str
    kind: str           # config | override | data | s3 | checkpoint | mlflow | benchmark | cli
    example: str        # what the user did, in words
    code: int           # exit family
    says: str           # a piece of the one-line message
    run: Callable       # (tmp: Path, env) -> exit status
    setup: Callable | None = None  # (tmp, env) -> None: puts the bad input in place before the files are hashed


# ---------------------------------------------------------------------------------------------- helpers

def project(tmp: Path, edit: Callable[[dict], None] | None = None, text: str | None = None) -> Path:
    """A project folder with the real dvc.yaml and params.yaml, and earlier outputs of a previous run."""
    root = tmp / "proj"
    if not root.exists():
        root.mkdir()
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        (root / "metrics").mkdir()
        (root / "metrics" / "eval.json").write_text('{"geneval-shapes/overall@1nfe": 0.5}\n')
    if edit is not None:
        params = yaml.safe_load((root / "params.yaml").read_text())
        edit(params)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if text is not None:
        (root / "params.yaml").write_text(text)
    return root


def twinflow(*argv: str) -> int:
    from flows.cli import main

    try:
        return main(list(argv))
    except SystemExit as exit_:  # argparse's own usage errors
        return int(exit_.code)


def override(*items: str):
    return lambda tmp, env: twinflow("run", "--workdir", str(project(tmp)), "--no-push", *items)


def params_file(edit=None, text=None):
    """(run, setup): the bad params.yaml is written in setup, then `twinflow run` must leave it as it is."""
    return (lambda tmp, env: twinflow("run", "--workdir", str(project(tmp)), "--no-push"),
            lambda tmp, env: project(tmp, edit, text))


def direct(fn: Callable, command: str = "eval"):
    """A loader the stages call: its TwinflowError as the CLI prints it."""
    import sys

    from flows.cli import error_line
    from twinflow_core.errors import TwinflowError

    def run(tmp, env):
        try:
            fn(tmp, env)
        except TwinflowError as err:
            line, code = error_line(command, err)
            print(line, file=sys.stderr)
            return code
        return 0
    return run


def image_folder(tmp: Path, rows=None, images=None, metadata: bytes | None = None, strict=False) -> Path:
    from PIL import Image

    folder = tmp / "pets"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, size in (images if images is not None else {"a.png": 24, "b.png": 24}).items():
        if isinstance(size, bytes):
            (folder / name).write_bytes(size)
        else:
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / name)
    if metadata is None and rows is None:
        rows = [{"file_name": "a.png", "text": "a cat"}, {"file_name": "b.png", "text": "a dog"}]
    if metadata is None:
        metadata = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if metadata != b"<none>":
        (folder / "metadata.jsonl").write_bytes(metadata)
    return folder


def prepare_folder(path_of: Callable[[Path, object], str], strict=False):
    """(run, setup): setup writes the image folder and points data.imagefolder at it; run is the prepare stage."""
    def setup(tmp, env):
        url = path_of(tmp, env)
        project(tmp, lambda p: p["data"].update(
            {"name": "pets", "source": "imagefolder", "image_size": 24,
             "imagefolder": {"path": url, "strict": strict, "min_size": 16, "endpoint_url": env.endpoint}}))

    def run(tmp, env):
        from flows.stages.prepare import main

        return main(["--root", str(project(tmp))])
    return run, setup


def tiny_checkpoint(tmp: Path) -> Path:
    from support.pipeline import make_checkpoint

    path = tmp / "ckpt"
    if not path.exists():
        make_checkpoint(path)
    return path


def load(tmp, env, mangle):
    from twinflow_core.checkpoint import load_generator

    path = tiny_checkpoint(tmp)
    mangle(path)
    load_generator(path)


def truncate(path: Path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 3])


def pickle_instead(path: Path):
    import torch

    torch.save({"w": torch.zeros(2)}, path / "model.safetensors")  # a pickle named like safetensors


def other_architecture(path: Path):
    meta = json.loads((path / "model.json").read_text())
    meta["net_kwargs"]["channels"] = [16, 16]
    (path / "model.json").write_text(json.dumps(meta))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def models(*argv):
    def run(tmp, env):
        root = project(tmp)
        return twinflow("models", "--tracking-uri", env.sqlite(tmp), "--params", str(root / "params.yaml"), *argv)
    return run


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def s3_prepare(bucket: str, creds: bool = True, endpoint: str | None = None, refused: bool = False):
    def path_of(tmp, env):
        env.s3(creds, refused)
        if endpoint == "dead":
            env.endpoint = f"http://127.0.0.1:{free_port()}"
        return f"s3://{bucket}/pets"
    return prepare_folder(path_of)


def dvc_remote_push():
    """(run, setup): a DVC project with one tracked file and an S3 remote on moto; `dvc push` as the flow runs it,
    with a key the server does not know."""
    def setup(tmp, env):
        from dvc.repo import Repo

        env.s3(creds=True)
        root = tmp / "dvcproj"
        root.mkdir()
        (root / "weights.bin").write_bytes(b"\x00" * 64)
        # in this process (a dvc start or three less; the push itself is the flow's subprocess)
        with Repo.init(str(root), no_scm=True) as repo:
            repo.add(str(root / "weights.bin"))
            with repo.config.edit() as conf:
                conf["core"]["remote"] = "team"
                conf["remote"]["team"] = {"url": "s3://pets-bucket/dvc", "endpointurl": env.endpoint}
        env.refuse()

    def run(tmp, env):
        from flows import dvc_ops

        return direct(lambda t, e: dvc_ops.push(t / "dvcproj", lambda line: None), "run")(tmp, env)
    return run, setup


# ---------------------------------------------------------------------------------------------- the table

CASES = [
    # overrides: checked before anything is written or run
    Case("override-negative-steps", "override", "twinflow run train.steps=-5", 10, "train.steps: expected >= 1, got -5",
         override("train.steps=-5")),
    Case("override-image-size-range", "override", "twinflow run data.image_size=7", 10,
         "data.image_size: expected 8..1024, got 7", override("data.image_size=7")),
    Case("override-unknown-key", "override", "twinflow run train.stepz=5", 10, "did you mean 'train.steps'",
         override("train.stepz=5")),
    Case("override-wrong-type", "override", "twinflow run train.steps=many", 10, "train.steps is int",
         override("train.steps=many")),
    Case("override-not-key-value", "override", "twinflow run train.steps", 10, "expected KEY=VALUE",
         override("train.steps")),
    Case("override-whole-section", "override", "twinflow run train=5", 10, "is a whole section",
         override("train=5")),
    Case("override-batch-not-quarters", "override", "twinflow run train.batch_size=30", 10,
         "must be divisible by 4", override("train.batch_size=30")),
    Case("override-batch-vs-devices", "override", "twinflow run train.trainer.devices=3", 10,
         "not a multiple of devices*num_nodes (3)", override("train.trainer.devices=3")),
    Case("override-image-size-mismatch", "override", "twinflow run model.image_size=32", 10,
         "model.image_size is 32 but pretrain.data", override("model.image_size=32")),
    Case("override-gate-margin", "override", "twinflow run gate.champion_margin=2", 10,
         "gate.champion_margin must be a fraction in [0, 1)", override("gate.champion_margin=2")),
    Case("override-retries-range", "override", "twinflow run pipeline.retries=-1", 10,
         "pipeline.retries: expected 0..20, got -1", override("pipeline.retries=-1")),
    Case("override-eval-images", "override", "twinflow run evaluate.images_per_prompt=1", 10,
         "evaluate.images_per_prompt: diversity needs >= 2", override("evaluate.images_per_prompt=1")),
    # the params file itself
    Case("config-not-yaml", "config", "params.yaml is not YAML", 10, "not valid YAML",
         *params_file(text="data: [unclosed\n")),
    Case("config-unknown-key", "config", "data.imge_size in params.yaml", 10, "unknown key(s) ['imge_size']",
         *params_file(lambda p: p["data"].update(imge_size=3))),
    Case("config-bad-precision", "config", "train.trainer.precision: 8-bit", 10, "train.trainer.precision: '8-bit'",
         *params_file(lambda p: p["train"]["trainer"].update(precision="8-bit"))),
    Case("config-unknown-objective", "config", "objective.train.preset: magic", 10, "objective.train",
         *params_file(lambda p: p["objective"]["train"].update(preset="magic"))),
    # data: the prepare stage on an image folder
    Case("data-corrupt-image", "data", "an image file that is not an image", 11, "b.png: not a readable image",
         *prepare_folder(lambda t, e: str(image_folder(t, images={"a.png": 24, "b.png": b"\x89PNG broken"})))),
    Case("data-metadata-missing", "data", "no metadata.jsonl", 11, "metadata.jsonl: not found",
         *prepare_folder(lambda t, e: str(image_folder(t, metadata=b"<none>")))),
    Case("data-metadata-malformed", "data", "metadata.jsonl line 2 is not JSON", 11, "line 2: not valid JSON",
         *prepare_folder(lambda t, e: str(image_folder(
             t, metadata=b'{"file_name": "a.png", "text": "a cat"}\n{"file_name": b.png\n')))),
    Case("data-caption-not-utf8", "data", "a Latin-1 caption", 11, "line 2: not UTF-8",
         *prepare_folder(lambda t, e: str(image_folder(
             t, metadata=b'{"file_name": "a.png", "text": "a cat"}\n{"file_name": "b.png", "text": "caf\xe9"}\n')))),
    Case("data-empty-folder", "data", "an empty folder", 11, "metadata.jsonl: not found",
         *prepare_folder(lambda t, e: str((t / "empty").mkdir() or t / "empty"))),
    Case("data-duplicate-file-names", "data", "a file listed twice", 11, "'a.png' is already listed on line 1",
         *prepare_folder(lambda t, e: str(image_folder(t, rows=[{"file_name": "a.png", "text": "a cat"},
                                                                {"file_name": "a.png", "text": "a dog"}])))),
    Case("data-missing-image", "data", "metadata names a file that is not there", 11, "file 'c.png' not found",
         *prepare_folder(lambda t, e: str(image_folder(t, rows=[{"file_name": "a.png", "text": "a cat"},
                                                                {"file_name": "c.png", "text": "a dog"}])))),
    Case("data-wrong-size-strict", "data", "a 32 px image with strict: true", 11, "expected 24x24 RGB",
         *prepare_folder(lambda t, e: str(image_folder(t, images={"a.png": 32, "b.png": 24})), strict=True)),
    Case("data-too-small", "data", "an 8 px image (min_size 16)", 11, "smaller than data.imagefolder.min_size=16",
         *prepare_folder(lambda t, e: str(image_folder(t, images={"a.png": 8, "b.png": 24})))),
    Case("data-truncated-shard", "data", "a prepared shard cut short", 11, "images-00000.npz",
         direct(lambda t, e: _truncated_shard(t), "prepare")),
    # S3 (moto on 127.0.0.1)
    Case("s3-missing-bucket", "s3", "data.imagefolder.path: s3://nope/pets", 12, "bucket 'nope' does not exist",
         *s3_prepare("nope")),
    Case("s3-no-credentials", "s3", "no AWS credentials in the environment", 12, "no AWS credentials found",
         *s3_prepare("pets-bucket", creds=False)),
    Case("s3-wrong-credentials", "s3", "an AWS key the S3 server does not know (moto enforcing auth)", 12,
         "refused the AWS credentials for bucket 'pets-bucket'", *s3_prepare("pets-bucket", refused=True)),
    Case("s3-remote-wrong-credentials", "s3", "dvc push to an S3 remote with a key the server does not know", 12,
         "the remote 'team' (s3://pets-bucket/dvc at http://127.0.0.1:", *dvc_remote_push()),
    Case("s3-unreachable-endpoint", "s3", "endpoint_url on a port nobody listens on", 12, "cannot reach the S3 endpoint",
         *s3_prepare("pets-bucket", endpoint="dead")),
    # checkpoints
    Case("checkpoint-missing", "checkpoint", "a checkpoint folder without model.json", 13, "no model.json",
         direct(lambda t, e: load(t, e, lambda p: (p / "model.json").unlink()))),
    Case("checkpoint-weights-missing", "checkpoint", "model.safetensors deleted", 13, "missing model.safetensors",
         direct(lambda t, e: load(t, e, lambda p: (p / "model.safetensors").unlink()))),
    Case("checkpoint-truncated", "checkpoint", "model.safetensors cut to a third", 13, "not a readable safetensors",
         direct(lambda t, e: load(t, e, truncate))),
    Case("checkpoint-pickle", "checkpoint", "a torch pickle saved as model.safetensors", 13,
         "pickled .pt/.ckpt files are refused", direct(lambda t, e: load(t, e, pickle_instead))),
    Case("checkpoint-wrong-architecture", "checkpoint", "model.json names other channels", 13,
         "weights do not fit net 'unet'", direct(lambda t, e: load(t, e, other_architecture))),
    Case("checkpoint-bad-meta", "checkpoint", "model.json is not JSON", 13, "model.json: not valid JSON",
         direct(lambda t, e: load(t, e, lambda p: (p / "model.json").write_text("{")))),
    # MLflow registry (a local sqlite store; a server down on a free port)
    Case("mlflow-unknown-version", "mlflow", "twinflow models promote tiny-gen 7", 14, "has no version 7",
         models("promote", "tiny-gen", "7")),
    Case("mlflow-no-champion-alias", "mlflow", "twinflow models rollback tiny-gen (no champion)", 14,
         "has no champion to roll back", models("rollback", "tiny-gen")),
    Case("mlflow-server-down", "mlflow", "--tracking-uri http://127.0.0.1:<closed port>", 17, "is unreachable",
         lambda t, e: twinflow("models", "--tracking-uri", f"http://127.0.0.1:{free_port()}", "--params",
                               str(project(t) / "params.yaml"), "list")),
    # official-benchmark outputs
    Case("geneval-row-incomplete", "benchmark", "results.jsonl row without correct/metadata", 15,
         "r.jsonl:1: a GenEval result row needs", lambda t, e: twinflow(
             "eval", "geneval-summary", str(write(t, "r.jsonl", '{"tag": "colors"}\n')))),
    Case("geneval-not-json", "benchmark", "results.jsonl line is not JSON", 15, "r.jsonl:1: not JSON",
         lambda t, e: twinflow("eval", "geneval-summary", str(write(t, "r.jsonl", "{oops\n")))),
    Case("dpg-results-missing", "benchmark", "a DPG results file that does not exist", 15, "DPG results not found",
         lambda t, e: twinflow("eval", "dpg-summary", str(t / "gone_results.txt"))),
    Case("dpg-no-score-line", "benchmark", "a DPG results file of an unfinished run", 15, "no 'DPG-Bench score:'",
         lambda t, e: twinflow("eval", "dpg-summary", str(write(t, "x_results.txt", "started\n")))),
    # command-line arguments
    Case("cli-unknown-command", "cli", "twinflow deploy", 2, "invalid choice: 'deploy'",
         lambda t, e: twinflow("deploy")),
    Case("cli-missing-argument", "cli", "twinflow models promote tiny-gen", 2, "the following arguments are required",
         lambda t, e: twinflow("models", "promote", "tiny-gen")),
    Case("cli-force-without-reason", "cli", "twinflow models promote tiny-gen 1 --force", 10, "--force needs --reason",
         models("promote", "tiny-gen", "1", "--force")),
    Case("cli-dpg-detail-needs-csv", "cli", "twinflow eval dpg-summary x_detail.txt", 10, "needs --csv",
         lambda t, e: twinflow("eval", "dpg-summary", str(write(t, "x_detail.txt", "")))),
]


def _truncated_shard(tmp: Path):
    from support.training import make_dataset
    from twinflow_core.data.prepared import read_shard

    data = make_dataset(tmp / "data", n=16, size=16)
    shard = data / "shards" / "images-00000.npz"
    raw = shard.read_bytes()
    shard.chmod(0o644)
    shard.write_bytes(raw[: len(raw) // 2])
    read_shard(shard)


class Env:
    """Shared, lazily started resources: a moto S3 server (module scope) and one sqlite MLflow store."""

    def __init__(self, monkeypatch, moto_endpoint, db: Path):
        self.monkeypatch, self.moto, self.db, self.endpoint = monkeypatch, moto_endpoint, db, None
        self.enforcing = False

    def moto_auth(self, count: str) -> None:
        """moto 5.2.5's switch (POST /moto-api/reset-auth, the body a number): check every request's signature
        against the IAM keys it knows after `count` more requests ("inf": never, its default)."""
        import urllib.request

        # text/plain: a form-encoded body (urllib's default) would reach moto empty
        urllib.request.urlopen(urllib.request.Request(f"{self.moto()}/moto-api/reset-auth", data=count.encode(),
                                                      method="POST", headers={"Content-Type": "text/plain"})).read()
        self.enforcing = count != "inf"

    def close(self) -> None:
        if self.enforcing:  # the server is shared by the module's cases
            self.moto_auth("inf")

    def refuse(self) -> None:
        """A well-formed key moto's IAM has never issued, and moto checking every request: each is answered 403."""
        self.monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
        self.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        self.moto_auth("0")

    def s3(self, creds: bool, refused: bool = False):
        from support.s3 import upload

        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
            self.monkeypatch.delenv(key, raising=False)
        self.monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        self.monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        self.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
        self.endpoint = self.moto()
        upload(self.endpoint, image_folder(self.db.parent / "src"), "pets-bucket", "pets")
        if refused:
            self.refuse()
        if not creds:
            self.monkeypatch.delenv("AWS_ACCESS_KEY_ID")
            self.monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
            self.monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(self.db.parent / "none"))
            self.monkeypatch.setenv("AWS_CONFIG_FILE", str(self.db.parent / "none"))

    def sqlite(self, tmp: Path) -> str:
        return mlflow_db.sqlite_uri(self.db)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One moto server (started on first use) and one MLflow sqlite store for the module."""
    base = tmp_path_factory.mktemp("shared")
    state: dict = {}

    def moto():
        if "endpoint" not in state:
            from moto.server import ThreadedMotoServer

            port = free_port()
            state["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            state["server"].start()
            state["endpoint"] = f"http://127.0.0.1:{port}"
        return state["endpoint"]

    (base / "src").mkdir()
    yield base / "mlflow.db", moto
    if "server" in state:
        state["server"].stop()


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_its_family_and_loses_nothing(case, tmp_path, shared, monkeypatch, capsys):
    db, moto = shared
    env = Env(monkeypatch, moto, db)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project(tmp_path)  # the earlier outputs: params.yaml, dvc.yaml, metrics/eval.json
    try:
        if case.setup:
            case.setup(tmp_path, env)
        before = digests(tmp_path)
        code = case.run(tmp_path, env)
    finally:
        env.close()
    err = capsys.readouterr().err
    # MLflow's own INFO lines (it creates the sqlite tables on first use) are log output, not the error
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.match(r"^\d{4}/\d\d/\d\d [\d:]+ INFO ", ln)]
    assert code == case.code, err
    assert len(lines) == 1, err
    assert case.says in lines[0], lines[0]
    for secret in ("testing-secret", "wJalrXUtnFEMI"):  # the S3 cases' secret keys
        assert secret not in err
    after = digests(tmp_path)
    # every file that was there before is unchanged, params.yaml first (a case may add inputs of its own);
    # DVC's scratch folder is not an output (its lock file names the last dvc process)
    assert after["proj/params.yaml"] == before["proj/params.yaml"]
    assert {k: after.get(k) for k in before if "/.dvc/tmp/" not in k} == {
        k: v for k, v in before.items() if "/.dvc/tmp/" not in k}


def test_catalogue_spans_every_kind_with_distinct_families():
    kinds = {c.kind for c in CASES}
    assert kinds == {"config", "override", "data", "s3", "checkpoint", "mlflow", "benchmark", "cli"}
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    family = {"override": 10, "config": 10, "data": 11, "s3": 12, "checkpoint": 13, "benchmark": 15}
    for c in CASES:
        assert c.code == family.get(c.kind, c.code), c.id

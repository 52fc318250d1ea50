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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import mlflow_db

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # config | override | data | s3 | checkpoint | mlflow | benchmark | cli | fetch | credential
    example: str  # what the user did, in words
    code: int  # exit family
    says: str  # a piece of the one-line message
    run: Callable  # (tmp: Path, env) -> exit status
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
    return (
        lambda tmp, env: twinflow("run", "--workdir", str(project(tmp)), "--no-push"),
        lambda tmp, env: project(tmp, edit, text),
    )


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
        project(
            tmp,
            lambda p: p["data"].update(
                {
                    "name": "pets",
                    "source": "imagefolder",
                    "image_size": 24,
                    "imagefolder": {"path": url, "strict": strict, "min_size": 16, "endpoint_url": env.endpoint},
                }
            ),
        )

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


def hostile_s3(prefix: str, bad_key: Callable[[Path], str], meta: dict | None = None):
    """setup: s3://hostile-bucket/<prefix> holding a generator (latent: every file is copied) and a key naming a
    file outside it, written with boto3 directly (no uploader of the project would write it)."""

    def setup(tmp, env):
        import boto3

        env.s3(creds=True)
        env.monkeypatch.setenv("AWS_ENDPOINT_URL", env.endpoint)
        s3 = boto3.client("s3", endpoint_url=env.endpoint)
        s3.create_bucket(Bucket="hostile-bucket")
        body = json.dumps(meta or {"format": "twinflow-latent-generator/1", "files": {}}).encode()
        s3.put_object(Bucket="hostile-bucket", Key=f"{prefix}/model.json", Body=body)
        s3.put_object(Bucket="hostile-bucket", Key=f"{prefix}/model.safetensors", Body=b"never read")
        s3.put_object(Bucket="hostile-bucket", Key=bad_key(tmp), Body=b"written outside")

    return setup


def fetch_init(url: str):
    """run: the fetch of `train.init=URL` that `twinflow run` and the train stage do, into the project."""

    def fn(tmp, env):
        from flows import init_source

        init_source.fetch(url, project(tmp) / "checkpoints" / "train-init")

    return direct(fn, "run")


def mlflow_symlink_setup(tmp, env):
    """A version registered in a sqlite store on this disk, its weights then replaced by a symbolic link to a file
    outside the store."""
    import contextlib
    import io

    from support.pipeline import make_outputs, scores

    from flows import register_step

    root = make_outputs(tmp / "reg", scores(0.8, 80.0))
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow's "Successfully registered ..." is not the case's line
        register_step.register_outputs(root, tracking_uri=mlflow_db.sqlite_uri(tmp / "reg.db"), log=lambda line: None)
    weights = next((root / "mlartifacts").rglob("model.safetensors"))
    weights.unlink()
    weights.symlink_to(write(tmp, "private.key", "PRIVATE KEY"))


CATALOGUE_PW = "catalogue-pw-4f1e9a"  # a password each credential case plants; no error line may show it


# ---------------------------------------------------------------------------------------------- the table

CASES = [
    # overrides: checked before anything is written or run
    Case(
        "override-negative-steps",
        "override",
        "twinflow run train.steps=-5",
        10,
        "train.steps: expected >= 1, got -5",
        override("train.steps=-5"),
    ),
    Case(
        "override-image-size-range",
        "override",
        "twinflow run data.image_size=7",
        10,
        "data.image_size: expected [8, 1024], got 7",
        override("data.image_size=7"),
    ),
    Case(
        "override-unknown-key",
        "override",
        "twinflow run train.stepz=5",
        10,
        "did you mean 'train.steps'",
        override("train.stepz=5"),
    ),
    Case(
        "override-wrong-type",
        "override",
        "twinflow run train.steps=many",
        10,
        "train.steps is int",
        override("train.steps=many"),
    ),
    Case(
        "override-not-key-value",
        "override",
        "twinflow run train.steps",
        10,
        "expected KEY=VALUE",
        override("train.steps"),
    ),
    Case("override-whole-section", "override", "twinflow run train=5", 10, "is a whole section", override("train=5")),
    Case(
        "override-batch-not-quarters",
        "override",
        "twinflow run train.batch_size=30",
        10,
        "must be divisible by 4",
        override("train.batch_size=30"),
    ),
    Case(
        "override-batch-vs-devices",
        "override",
        "twinflow run train.trainer.devices=3",
        10,
        "not a multiple of devices*num_nodes (3)",
        override("train.trainer.devices=3"),
    ),
    Case(
        "override-image-size-mismatch",
        "override",
        "twinflow run model.image_size=32",
        10,
        "model.image_size is 32 but pretrain.data",
        override("model.image_size=32"),
    ),
    Case(
        "override-gate-margin",
        "override",
        "twinflow run gate.champion_margin=2",
        10,
        "gate.champion_margin must be a fraction in [0, 1)",
        override("gate.champion_margin=2"),
    ),
    Case(
        "override-retries-range",
        "override",
        "twinflow run pipeline.retries=-1",
        10,
        "pipeline.retries: expected [0, 20], got -1",
        override("pipeline.retries=-1"),
    ),
    Case(
        "override-eval-images",
        "override",
        "twinflow run evaluate.images_per_prompt=1",
        10,
        "evaluate.images_per_prompt: expected >= 2, got 1",
        override("evaluate.images_per_prompt=1"),
    ),
    # the params file itself
    Case(
        "config-not-yaml",
        "config",
        "params.yaml is not YAML",
        10,
        "not valid YAML",
        *params_file(text="data: [unclosed\n"),
    ),
    Case(
        "config-unknown-key",
        "config",
        "data.imge_size in params.yaml",
        10,
        "unknown key(s) ['imge_size']",
        *params_file(lambda p: p["data"].update(imge_size=3)),
    ),
    Case(
        "config-bad-precision",
        "config",
        "train.trainer.precision: 8-bit",
        10,
        "train.trainer.precision: expected one of 32-true | 32 | bf16-mixed | 16-mixed | bf16-true, got '8-bit'",
        *params_file(lambda p: p["train"]["trainer"].update(precision="8-bit")),
    ),
    Case(
        "config-unknown-objective",
        "config",
        "objective.train.preset: magic",
        10,
        "objective.train",
        *params_file(lambda p: p["objective"]["train"].update(preset="magic")),
    ),
    # data: the prepare stage on an image folder
    Case(
        "data-corrupt-image",
        "data",
        "an image file that is not an image",
        11,
        "b.png: not a readable image",
        *prepare_folder(lambda t, e: str(image_folder(t, images={"a.png": 24, "b.png": b"\x89PNG broken"}))),
    ),
    Case(
        "data-metadata-missing",
        "data",
        "no metadata.jsonl",
        11,
        "metadata.jsonl: not found",
        *prepare_folder(lambda t, e: str(image_folder(t, metadata=b"<none>"))),
    ),
    Case(
        "data-metadata-malformed",
        "data",
        "metadata.jsonl line 2 is not JSON",
        11,
        "line 2: not valid JSON",
        *prepare_folder(
            lambda t, e: str(
                image_folder(t, metadata=b'{"file_name": "a.png", "text": "a cat"}\n{"file_name": b.png\n')
            )
        ),
    ),
    Case(
        "data-caption-not-utf8",
        "data",
        "a Latin-1 caption",
        11,
        "line 2: not UTF-8",
        *prepare_folder(
            lambda t, e: str(
                image_folder(
                    t, metadata=b'{"file_name": "a.png", "text": "a cat"}\n{"file_name": "b.png", "text": "caf\xe9"}\n'
                )
            )
        ),
    ),
    Case(
        "data-empty-folder",
        "data",
        "an empty folder",
        11,
        "metadata.jsonl: not found",
        *prepare_folder(lambda t, e: str((t / "empty").mkdir() or t / "empty")),
    ),
    Case(
        "data-duplicate-file-names",
        "data",
        "a file listed twice",
        11,
        "'a.png' is already listed on line 1",
        *prepare_folder(
            lambda t, e: str(
                image_folder(t, rows=[{"file_name": "a.png", "text": "a cat"}, {"file_name": "a.png", "text": "a dog"}])
            )
        ),
    ),
    Case(
        "data-missing-image",
        "data",
        "metadata names a file that is not there",
        11,
        "file 'c.png' not found",
        *prepare_folder(
            lambda t, e: str(
                image_folder(t, rows=[{"file_name": "a.png", "text": "a cat"}, {"file_name": "c.png", "text": "a dog"}])
            )
        ),
    ),
    Case(
        "data-wrong-size-strict",
        "data",
        "a 32 px image with strict: true",
        11,
        "expected 24x24 RGB",
        *prepare_folder(lambda t, e: str(image_folder(t, images={"a.png": 32, "b.png": 24})), strict=True),
    ),
    Case(
        "data-too-small",
        "data",
        "an 8 px image (min_size 16)",
        11,
        "smaller than data.imagefolder.min_size=16",
        *prepare_folder(lambda t, e: str(image_folder(t, images={"a.png": 8, "b.png": 24}))),
    ),
    Case(
        "data-truncated-shard",
        "data",
        "a prepared shard cut short",
        11,
        "images-00000.npz",
        direct(lambda t, e: _truncated_shard(t), "prepare"),
    ),
    # S3 (moto on 127.0.0.1)
    Case(
        "s3-missing-bucket",
        "s3",
        "data.imagefolder.path: s3://nope/pets",
        12,
        "bucket 'nope' does not exist",
        *s3_prepare("nope"),
    ),
    Case(
        "s3-no-credentials",
        "s3",
        "no AWS credentials in the environment",
        12,
        "no AWS credentials found",
        *s3_prepare("pets-bucket", creds=False),
    ),
    Case(
        "s3-wrong-credentials",
        "s3",
        "an AWS key the S3 server does not know (moto enforcing auth)",
        12,
        "refused the AWS credentials for bucket 'pets-bucket'",
        *s3_prepare("pets-bucket", refused=True),
    ),
    Case(
        "s3-remote-wrong-credentials",
        "s3",
        "dvc push to an S3 remote with a key the server does not know",
        12,
        "the remote 'team' (s3://pets-bucket/dvc at http://127.0.0.1:",
        *dvc_remote_push(),
    ),
    Case(
        "s3-unreachable-endpoint",
        "s3",
        "endpoint_url on a port nobody listens on",
        12,
        "cannot reach the S3 endpoint",
        *s3_prepare("pets-bucket", endpoint="dead"),
    ),
    # checkpoints
    Case(
        "checkpoint-missing",
        "checkpoint",
        "a checkpoint folder without model.json",
        13,
        "no model.json",
        direct(lambda t, e: load(t, e, lambda p: (p / "model.json").unlink())),
    ),
    Case(
        "checkpoint-weights-missing",
        "checkpoint",
        "model.safetensors deleted",
        13,
        "missing model.safetensors",
        direct(lambda t, e: load(t, e, lambda p: (p / "model.safetensors").unlink())),
    ),
    Case(
        "checkpoint-truncated",
        "checkpoint",
        "model.safetensors cut to a third",
        13,
        "not a readable safetensors",
        direct(lambda t, e: load(t, e, truncate)),
    ),
    Case(
        "checkpoint-pickle",
        "checkpoint",
        "a torch pickle saved as model.safetensors",
        13,
        "pickled .pt/.ckpt files are refused",
        direct(lambda t, e: load(t, e, pickle_instead)),
    ),
    Case(
        "checkpoint-wrong-architecture",
        "checkpoint",
        "model.json names other channels",
        13,
        "weights do not fit net 'unet'",
        direct(lambda t, e: load(t, e, other_architecture)),
    ),
    Case(
        "checkpoint-bad-meta",
        "checkpoint",
        "model.json is not JSON",
        13,
        "model.json: not valid JSON",
        direct(lambda t, e: load(t, e, lambda p: (p / "model.json").write_text("{"))),
    ),
    # a remote source that would write outside its folder: refused before a byte is written
    Case(
        "fetch-s3-key-dotdot",
        "fetch",
        "train.init=s3://b/gen holding the key gen/../../evil.txt",
        13,
        "file name '../../evil.txt' would land outside its folder",
        fetch_init("s3://hostile-bucket/gen"),
        hostile_s3("gen", lambda t: "gen/../../evil.txt"),
    ),
    Case(
        "fetch-s3-key-absolute",
        "fetch",
        "twinflow generate --model s3://b/gen holding gen//<abs path>/evil.txt",
        13,
        "would land outside its folder",
        lambda t, e: twinflow(
            "generate", "a red circle", "--model", "s3://hostile-bucket/abs", "--out", str(t / "g.png")
        ),
        hostile_s3("abs", lambda t: f"abs/{t}/evil.txt"),
    ),
    Case(
        "fetch-pipeline-listed-outside",
        "fetch",
        "a latent generator's model.json lists ../secret.txt",
        13,
        "model.json files: file name '../secret.txt' would land outside",
        fetch_init("s3://hostile-bucket/lists"),
        hostile_s3(
            "lists",
            lambda t: "lists/vae/config.json",
            {"format": "twinflow-latent-generator/1", "files": {"../secret.txt": "0" * 64}},
        ),
    ),
    Case(
        "fetch-mlflow-symlink",
        "fetch",
        "twinflow generate --model models:/tiny-gen@champion, weights a symlink",
        13,
        "model.safetensors: a symbolic link",
        lambda t, e: twinflow(
            "generate",
            "a red circle",
            "--model",
            "models:/tiny-gen@champion",
            "--tracking-uri",
            mlflow_db.sqlite_uri(t / "reg.db"),
            "--out",
            str(t / "g.png"),
        ),
        mlflow_symlink_setup,
    ),
    # a credential where a run would record it (params.yaml, its git ref, Prefect): refused, never stored
    Case(
        "credential-override",
        "credential",
        "twinflow run register.tracking_uri=http://u:PW@host",
        10,
        "override register.tracking_uri holds a password in a URI",
        override(f"register.tracking_uri=http://u:{CATALOGUE_PW}@127.0.0.1:5000"),
    ),
    Case(
        "credential-override-token",
        "credential",
        "twinflow run register.tracking_uri=https://host/?token=T",
        10,
        "holds a token in a URI's query",
        override(f"register.tracking_uri=https://127.0.0.1/?token={CATALOGUE_PW}"),
    ),
    Case(
        "credential-tracking-uri-flag",
        "credential",
        "twinflow run --tracking-uri postgresql://u:PW@127.0.0.1/db",
        10,
        "twinflow run --tracking-uri holds a password in a URI",
        override("--tracking-uri", f"postgresql://u:{CATALOGUE_PW}@127.0.0.1/db"),
    ),
    Case(
        "credential-storage-options",
        "credential",
        "twinflow run data.imagefolder.storage_options.secret=S",
        10,
        "data.imagefolder.storage_options.secret holds a secret (the key 'secret')",
        override(f"data.imagefolder.storage_options.secret={CATALOGUE_PW}"),
    ),
    Case(
        "credential-params-yaml",
        "credential",
        "register.tracking_uri: http://u:PW@host in params.yaml",
        10,
        "params.yaml: register.tracking_uri holds a password in a URI",
        *params_file(lambda p: p["register"].update(tracking_uri=f"http://u:{CATALOGUE_PW}@127.0.0.1:5000")),
    ),
    # MLflow registry (a local sqlite store; a server down on a free port)
    Case(
        "mlflow-unknown-version",
        "mlflow",
        "twinflow models promote tiny-gen 7",
        14,
        "has no version 7",
        models("promote", "tiny-gen", "7"),
    ),
    Case(
        "mlflow-no-champion-alias",
        "mlflow",
        "twinflow models rollback tiny-gen (no champion)",
        14,
        "has no champion to roll back",
        models("rollback", "tiny-gen"),
    ),
    Case(
        "mlflow-server-down",
        "mlflow",
        "--tracking-uri http://127.0.0.1:<closed port>",
        17,
        "is unreachable",
        lambda t, e: twinflow(
            "models",
            "--tracking-uri",
            f"http://127.0.0.1:{free_port()}",
            "--params",
            str(project(t) / "params.yaml"),
            "list",
        ),
    ),
    # official-benchmark outputs
    Case(
        "geneval-row-incomplete",
        "benchmark",
        "results.jsonl row without correct/metadata",
        15,
        "r.jsonl:1: a GenEval result row needs",
        lambda t, e: twinflow("eval", "geneval-summary", str(write(t, "r.jsonl", '{"tag": "colors"}\n'))),
    ),
    Case(
        "geneval-not-json",
        "benchmark",
        "results.jsonl line is not JSON",
        15,
        "r.jsonl:1: not JSON",
        lambda t, e: twinflow("eval", "geneval-summary", str(write(t, "r.jsonl", "{oops\n"))),
    ),
    Case(
        "dpg-results-missing",
        "benchmark",
        "a DPG results file that does not exist",
        15,
        "DPG results not found",
        lambda t, e: twinflow("eval", "dpg-summary", str(t / "gone_results.txt")),
    ),
    Case(
        "dpg-no-score-line",
        "benchmark",
        "a DPG results file of an unfinished run",
        15,
        "no 'DPG-Bench score:'",
        lambda t, e: twinflow("eval", "dpg-summary", str(write(t, "x_results.txt", "started\n"))),
    ),
    # command-line arguments
    Case(
        "cli-unknown-command", "cli", "twinflow deploy", 2, "invalid choice: 'deploy'", lambda t, e: twinflow("deploy")
    ),
    Case(
        "cli-missing-argument",
        "cli",
        "twinflow models promote tiny-gen",
        2,
        "the following arguments are required",
        lambda t, e: twinflow("models", "promote", "tiny-gen"),
    ),
    Case(
        "cli-force-without-reason",
        "cli",
        "twinflow models promote tiny-gen 1 --force",
        10,
        "--force needs --reason",
        models("promote", "tiny-gen", "1", "--force"),
    ),
    Case(
        "cli-dpg-detail-needs-csv",
        "cli",
        "twinflow eval dpg-summary x_detail.txt",
        10,
        "needs --csv",
        lambda t, e: twinflow("eval", "dpg-summary", str(write(t, "x_detail.txt", ""))),
    ),
]

# Hostile values by class: non-finite and out-of-range numbers, unbounded parsing, checks made before the first
# stage, and arguments the CLI used to pass to a library raw.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("bcdefgh", "cdefghi")
)


def nan_checkpoint(tmp: Path) -> Path:
    """A generator folder whose weights are NaN, written with plain safetensors (not the project's exporter)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = tiny_checkpoint(tmp)
    state = load_file(str(path / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(path / "model.safetensors"))
    return path


def generate(*argv, model=None):
    return lambda tmp, env: twinflow(
        "generate",
        "a red circle",
        "--model",
        str(model(tmp) if model else tiny_checkpoint(tmp)),
        "--out",
        str(tmp / "out.png"),
        *argv,
    )


def train_stage_from(init_of: Callable):
    """The train stage as DVC runs it (its main, in this process), from the init folder `init_of(tmp)`."""

    def run(tmp, env):
        from support.training import make_dataset

        from flows.stages.train import main

        data = make_dataset(tmp / "data", n=16, size=16)
        return main(
            [
                "--params",
                str(project(tmp) / "params.yaml"),
                "--set",
                f"train.init={init_of(tmp)}",
                "--set",
                f"train.data={data}",
            ]
        )

    return run


def corrupt_lock(tmp, env):
    (project(tmp) / "dvc.lock").write_text("schema: '2.0'\nstages:\n  prepare: [unclosed\n")


def meta(edit):
    def mangle(path: Path):
        data = json.loads((path / "model.json").read_text())
        (path / "model.json").write_text(json.dumps(edit(data)))

    return mangle


CASES += [
    # finite numbers: NaN and infinities pass every `value < low` range check, huge ints overflow torch/numpy
    Case(
        "override-nan-lr",
        "override",
        "twinflow run train.lr=.nan",
        10,
        "train.lr: expected a finite number, got nan",
        override("train.lr=.nan"),
    ),
    Case(
        "override-nan-grad-clip",
        "override",
        "twinflow run train.grad_clip=.nan",
        10,
        "train.grad_clip: expected a finite number",
        override("train.grad_clip=.nan"),
    ),
    Case(
        "override-inf-objective-ratio",
        "override",
        "twinflow run objective.train.overrides.enhanced_ratio=.inf",
        10,
        "enhanced_ratio: expected a finite number, got inf",
        override("objective.train.overrides.enhanced_ratio=.inf"),
    ),
    Case(
        "override-huge-seed",
        "override",
        "twinflow run train.seed=100000000000000000000",
        10,
        "train.seed: expected a seed in 0..4294967295",
        override("train.seed=100000000000000000000"),
    ),
    Case(
        "config-nan-in-file",
        "config",
        "gate.champion_margin: .nan in params.yaml",
        10,
        "gate.champion_margin: expected a finite number",
        *params_file(lambda p: p["gate"].update(champion_margin=float("nan"))),
    ),
    Case(
        "checkpoint-nan-weights-train",
        "checkpoint",
        "train.init holds NaN weights (python -m flows.stages.train)",
        13,
        "holds NaN or infinite values",
        train_stage_from(nan_checkpoint),
    ),
    Case(
        "checkpoint-nan-weights-generate",
        "checkpoint",
        "twinflow generate --model <NaN weights>",
        13,
        "holds NaN or infinite values",
        generate(model=nan_checkpoint),
    ),
    Case(
        "cli-generate-seed-overflow",
        "cli",
        "twinflow generate --seeds 99999999999999999999",
        2,
        "--seeds: expected a seed in 0..4294967295",
        generate("--seeds", "99999999999999999999"),
    ),
    # bounded parsing
    Case(
        "config-yaml-alias-bomb",
        "config",
        "params.yaml with nested YAML aliases (a billion nodes)",
        10,
        "YAML aliases (*a) are not accepted",
        *params_file(text=BOMB),
    ),
    Case(
        "override-yaml-alias",
        "override",
        "twinflow run 'train.betas=[&a 0.9, *a]'",
        10,
        "YAML aliases (*a) are not accepted",
        override("train.betas=[&a 0.9, *a]"),
    ),
    Case(
        "cli-generate-long-prompt",
        "cli",
        "twinflow generate '<2,000 words>'",
        2,
        "prompt 1 is 10000 characters (at most 2000): 'word word",
        lambda t, e: twinflow(
            "generate", "word " * 2000, "--model", str(tiny_checkpoint(t)), "--out", str(t / "out.png")
        ),
    ),
    Case(
        "data-caption-too-long",
        "data",
        "a 10,000-character caption in metadata.jsonl",
        11,
        "line 2 ('b.png'): the caption is 10000 characters (at most 2000)",
        *prepare_folder(
            lambda t, e: str(
                image_folder(
                    t, rows=[{"file_name": "a.png", "text": "a cat"}, {"file_name": "b.png", "text": "x" * 10000}]
                )
            )
        ),
    ),
    # checked before the first stage
    Case(
        "override-unknown-model-name",
        "override",
        "twinflow run model.name=unet3",
        10,
        "model.name: unknown net 'unet3'",
        override("model.name=unet3"),
    ),
    Case(
        "override-zero-heads",
        "override",
        "twinflow run model.heads=0",
        10,
        "model.heads: expected >= 1, got 0",
        override("model.heads=0"),
    ),
    Case(
        "checkpoint-missing-init-up-front",
        "checkpoint",
        "twinflow run train.init=checkpoints/nowhere",
        13,
        "checkpoints/nowhere: no model.json",
        override("train.init=checkpoints/nowhere"),
    ),
    Case(
        "checkpoint-init-other-architecture-up-front",
        "checkpoint",
        "train.init is a generator of another width than model.* (twinflow run)",
        13,
        "made for another architecture than",
        lambda tmp, env: twinflow(
            "run", "--workdir", str(project(tmp)), "--no-push", f"train.init={tiny_checkpoint(tmp)}"
        ),
    ),
    Case(
        "checkpoint-pretrain-init-other-architecture-up-front",
        "checkpoint",
        "pretrain.init is a generator of another width than model.* (twinflow run)",
        13,
        "pretrain.init",
        lambda tmp, env: twinflow(
            "run",
            "--workdir",
            str(project(tmp)),
            "--no-push",
            f"pretrain.init={tiny_checkpoint(tmp)}",
            f"train.init={tiny_checkpoint(tmp)}",  # the committed base is not in this project folder
        ),
    ),
    Case(
        "data-image-folder-missing-up-front",
        "data",
        "data.imagefolder.path names no folder (twinflow run)",
        11,
        "image folder",
        *params_file(
            lambda p: p["data"].update(
                {"name": "pets", "source": "imagefolder", "imagefolder": {"path": "nowhere/pets"}}
            )
        ),
    ),
    Case(
        "checkpoint-meta-not-object",
        "checkpoint",
        "model.json is a JSON list",
        13,
        "expected a JSON object, got list",
        direct(lambda t, e: load(t, e, lambda p: (p / "model.json").write_text("[1, 2]"))),
    ),
    Case(
        "checkpoint-meta-missing-key",
        "checkpoint",
        "model.json without net_kwargs",
        13,
        "key 'net_kwargs' must be a JSON object, got nothing",
        direct(lambda t, e: load(t, e, meta(lambda m: {k: v for k, v in m.items() if k != "net_kwargs"}))),
    ),
    # the CLI's own arguments and files
    Case(
        "cli-generate-out-is-folder",
        "cli",
        "twinflow generate --out <a folder>",
        2,
        "is a folder; name the PNG",
        lambda t, e: twinflow("generate", "a red circle", "--model", str(tiny_checkpoint(t)), "--out", str(t)),
    ),
    Case(
        "config-dvc-lock-corrupt",
        "config",
        "a hand-edited dvc.lock that is not YAML",
        10,
        "dvc.lock: not valid YAML",
        override(),
        corrupt_lock,
    ),
    Case(
        "config-tracking-uri-ftp",
        "config",
        "twinflow models --tracking-uri ftp://host/x list",
        10,
        "scheme 'ftp' is not a tracking store",
        lambda t, e: twinflow(
            "models", "--tracking-uri", "ftp://127.0.0.1/x", "--params", str(project(t) / "params.yaml"), "list"
        ),
    ),
    Case(
        "config-tracking-uri-folder",
        "config",
        "twinflow models --tracking-uri <a folder> list",
        10,
        "a folder is not a tracking store",
        lambda t, e: twinflow("models", "--tracking-uri", str(t), "--params", str(project(t) / "params.yaml"), "list"),
    ),
    Case(
        "config-tracking-uri-not-a-database",
        "config",
        "--tracking-uri sqlite:///<a text file>",
        10,
        "is not an SQLite database",
        lambda t, e: twinflow(
            "models",
            "--tracking-uri",
            f"sqlite:///{write(t, 'notes.db', 'hello')}",
            "--params",
            str(project(t) / "params.yaml"),
            "list",
        ),
    ),
    Case(
        "geneval-not-utf8",
        "benchmark",
        "a results.jsonl with a byte that is not UTF-8",
        15,
        "r.jsonl:2: not UTF-8 text (byte 0xff)",
        lambda t, e: twinflow("eval", "geneval-summary", str(_bytes(t / "r.jsonl", b'{"a": 1}\n\xff\n'))),
    ),
    Case(
        "data-decompression-bomb",
        "data",
        "a 20000x20000 PNG of 48 kB in the image folder",
        11,
        "b.png: refused, too many pixels",
        *prepare_folder(lambda t, e: str(image_folder(t, images={"a.png": 24, "b.png": _bomb_png()}))),
    ),
]


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _bomb_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    return buf.getvalue()


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
        urllib.request.urlopen(
            urllib.request.Request(
                f"{self.moto()}/moto-api/reset-auth",
                data=count.encode(),
                method="POST",
                headers={"Content-Type": "text/plain"},
            )
        ).read()
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

        for key in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE",
        ):
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
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


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
    for secret in ("testing-secret", "wJalrXUtnFEMI", CATALOGUE_PW):  # the S3 cases' secret keys, a planted password
        assert secret not in err
    after = digests(tmp_path)
    # every file that was there before is unchanged, params.yaml first (a case may add inputs of its own);
    # DVC's scratch folder is not an output (its lock file names the last dvc process)
    assert after["proj/params.yaml"] == before["proj/params.yaml"]
    assert {k: after.get(k) for k in before if "/.dvc/tmp/" not in k} == {
        k: v for k, v in before.items() if "/.dvc/tmp/" not in k
    }


def test_catalogue_spans_every_kind_with_distinct_families():
    kinds = {c.kind for c in CASES}
    assert kinds == {
        "config",
        "override",
        "data",
        "s3",
        "checkpoint",
        "mlflow",
        "benchmark",
        "cli",
        "fetch",
        "credential",
    }
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    family = {
        "override": 10,
        "config": 10,
        "data": 11,
        "s3": 12,
        "checkpoint": 13,
        "benchmark": 15,
        "fetch": 13,
        "credential": 10,
    }
    for c in CASES:
        assert c.code == family.get(c.kind, c.code), c.id

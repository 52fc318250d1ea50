"""Image folders (metadata.jsonl + images) from disk and from S3 (moto in server mode on 127.0.0.1): the same
files give the same prepared bytes, and every kind of bad input is a one-line error naming the file or row,
with no dataset left behind."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.s3 import SECRET, free_port, moto_endpoint, s3_env, upload  # noqa: F401 (fixtures)
from twinflow_core.data.config import DataConfig
from twinflow_core.data.prepared import load_prepared, prepare
from twinflow_core.errors import DataError


def make_folder(root: Path) -> Path:
    """Eight images of assorted sizes and modes, and their captions."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    specs = [
        ("a.png", "RGB", (40, 30)),
        ("b.png", "RGBA", (32, 32)),
        ("c.jpg", "RGB", (64, 48)),
        ("d.png", "L", (50, 50)),
        ("sub/e.png", "P", (30, 60)),
        ("f.png", "RGB", (24, 24)),
        ("g.png", "LA", (33, 33)),
        ("h.bmp", "RGB", (100, 20)),
    ]
    for k, (name, mode, size) in enumerate(specs):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB")
        img = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.ADAPTIVE)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / name)
        rows.append({"file_name": name, "text": f"A Picture number {k}, of noise!"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def cfg(path: str, **folder) -> DataConfig:
    return DataConfig.from_dict(
        {
            "name": "mine",
            "source": "imagefolder",
            "image_size": 24,
            "shard_size": 3,
            "imagefolder": {"path": path, **folder},
        }
    )


def assert_no_dataset(out: Path):
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def one_line_error(tmp_path: Path, config: DataConfig, match: str) -> str:
    out = tmp_path / "prepared" / "mine"
    with pytest.raises(DataError) as info:
        prepare(config, out=out, progress=False)
    message = str(info.value)
    assert "\n" not in message and match in message, message
    assert_no_dataset(out)
    return message


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "images")


def test_local_folder_is_resized_cropped_and_captioned(folder, tmp_path):
    path, meta, _ = prepare(cfg(str(folder)), out=tmp_path / "out", progress=False)
    ds = load_prepared(path)
    assert ds.images.shape == (8, 24, 24, 3) and ds.labels is None and ds.scenes is None
    assert ds.captions[4] == "A Picture number 4, of noise!"
    assert ds.manifest["source"].tolist()[4] == "imagefolder:sub/e.png"
    assert meta["vocabulary"] == sorted({"a", "picture", "number", "of", "noise", *"01234567"})
    # f.png is already 24x24 RGB: it passes through unchanged.
    assert np.array_equal(ds.images[5], np.asarray(Image.open(folder / "f.png")))
    # b.png is RGBA: alpha is composited on white, so fully transparent pixels become white.
    assert meta["params"] == {"min_size": 16, "strict": False}


def test_corrupt_image_names_the_file(folder, tmp_path):
    (folder / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    one_line_error(tmp_path, cfg(str(folder)), f"{folder}/c.jpg: not a readable image")


def test_truncated_image_names_the_file(folder, tmp_path):
    data = (folder / "h.bmp").read_bytes()
    (folder / "h.bmp").write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path, cfg(str(folder)), f"{folder}/h.bmp: not a readable image")


def test_image_of_another_size_or_mode(folder, tmp_path):
    one_line_error(
        tmp_path,
        cfg(str(folder), strict=True),
        f"{folder}/a.png: 40x30 RGB, expected 24x24 RGB (data.imagefolder.strict)",
    )
    Image.new("I;16", (40, 40)).save(folder / "a.png")
    one_line_error(tmp_path, cfg(str(folder)), f"{folder}/a.png: image mode 'I;16' is not supported")
    Image.new("RGB", (10, 12)).save(folder / "a.png")
    one_line_error(tmp_path, cfg(str(folder)), f"{folder}/a.png: 10x12 is smaller than data.imagefolder.min_size=16")


def test_missing_metadata_or_folder(folder, tmp_path):
    (folder / "metadata.jsonl").unlink()
    one_line_error(tmp_path, cfg(str(folder)), f"{folder}/metadata.jsonl: not found")
    one_line_error(tmp_path, cfg(str(tmp_path / "nowhere")), f"image folder {tmp_path}/nowhere: not a directory")


def _rewrite_line(folder: Path, line: int, text: str):
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    lines[line - 1] = text
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_row_naming_a_missing_file(folder, tmp_path):
    _rewrite_line(folder, 3, json.dumps({"file_name": "ghost.png", "text": "boo"}))
    one_line_error(tmp_path, cfg(str(folder)), "metadata.jsonl line 3: file 'ghost.png' not found in")


def test_empty_caption_and_malformed_rows(folder, tmp_path):
    _rewrite_line(folder, 2, json.dumps({"file_name": "b.png", "text": "   "}))
    one_line_error(tmp_path, cfg(str(folder)), "metadata.jsonl line 2 (b.png): empty caption")
    _rewrite_line(folder, 2, '{"file_name": "b.png", "text": ')
    one_line_error(tmp_path, cfg(str(folder)), "metadata.jsonl line 2: not valid JSON")
    _rewrite_line(folder, 2, json.dumps({"file_name": "b.png"}))
    one_line_error(tmp_path, cfg(str(folder)), "metadata.jsonl line 2: missing 'text'")
    _rewrite_line(folder, 2, json.dumps({"file_name": "../b.png", "text": "x"}))
    one_line_error(tmp_path, cfg(str(folder)), "line 2: file_name '../b.png' must be a path inside the folder")


# ---------------------------------------------------------------- S3 (moto server on 127.0.0.1)


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_s3_folder_gives_the_same_dataset_as_the_same_files_on_disk(folder, tmp_path, s3_env):
    upload(s3_env, folder, "pictures", "sets/noise")
    from_disk, _, _ = prepare(cfg(str(folder)), out=tmp_path / "disk", progress=False)
    from_s3, _, _ = prepare(cfg("s3://pictures/sets/noise", endpoint_url=s3_env), out=tmp_path / "s3", progress=False)
    disk, s3 = files_of(from_disk), files_of(from_s3)
    assert len(disk) == 5 and disk == s3  # meta, manifest and 3 shards of 3+3+2 images, byte for byte


def test_s3_endpoint_from_the_environment(folder, tmp_path, s3_env, monkeypatch):
    upload(s3_env, folder, "envbucket", "x")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env)
    path, meta, _ = prepare(cfg("s3://envbucket/x"), out=tmp_path / "env", progress=False)
    assert meta["n"] == 8


def test_s3_missing_bucket(tmp_path, s3_env):
    msg = one_line_error(
        tmp_path,
        cfg("s3://no-such-bucket/x", endpoint_url=s3_env),
        "s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist",
    )
    assert SECRET not in msg


def test_s3_missing_metadata_and_missing_file(folder, tmp_path, s3_env):
    _rewrite_line(folder, 5, json.dumps({"file_name": "sub/ghost.png", "text": "boo"}))
    upload(s3_env, folder, "holes", "p")
    one_line_error(
        tmp_path,
        cfg("s3://holes/p", endpoint_url=s3_env),
        "s3://holes/p/metadata.jsonl line 5: file 'sub/ghost.png' not found in s3://holes/p",
    )
    one_line_error(
        tmp_path, cfg("s3://holes/elsewhere", endpoint_url=s3_env), "s3://holes/elsewhere/metadata.jsonl: not found"
    )


def test_s3_unreachable_endpoint(tmp_path, s3_env):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    msg = one_line_error(
        tmp_path, cfg("s3://pictures/x", endpoint_url=dead), f"s3://pictures/x: cannot reach the S3 endpoint {dead}"
    )
    assert SECRET not in msg


def test_s3_wrong_credentials(folder, tmp_path, s3_env, monkeypatch):
    upload(s3_env, folder, "locked", "p")

    def set_auth(count: str):  # moto's switch: enforce IAM authentication after `count` requests
        req = urllib.request.Request(
            f"{s3_env}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(req).read()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    set_auth("0")
    try:
        msg = one_line_error(
            tmp_path,
            cfg("s3://locked/p", endpoint_url=s3_env),
            f"s3://locked/p: S3 at {s3_env} refused the AWS credentials for bucket 'locked'",
        )
    finally:
        set_auth("inf")
    assert SECRET not in msg and "AKIAWRONG" not in msg

"""The prepared-dataset format (byte-identical rebuilds, atomic replacement, the load_prepared contract) and the
validate stage's Great Expectations suite catching damaged shards and manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from twinflow_core.data.config import DataConfig
from twinflow_core.data.prepared import load_prepared, prepare, read_shard, write_npz, write_prepared
from twinflow_core.data.sample import Sample
from twinflow_core.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def small_params(name="shapes", **data):
    return {
        "data": {
            "name": name,
            "image_size": 24,
            "shard_size": 64,
            "shapes": {"n_images": 150, "holdout_dir": str(REPO / "data/prompts")},
            **data,
        },
        "validate": {},
    }


def build(tmp_path: Path, params: dict, sub: str = "ds") -> Path:
    path, _, _ = prepare(DataConfig.from_dict(params["data"]), root=REPO, out=tmp_path / sub, progress=False)
    return path


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_same_input_and_seed_give_byte_identical_datasets(tmp_path):
    a = files_of(build(tmp_path, small_params(), "a"))
    b = files_of(build(tmp_path, small_params(), "b"))
    assert sorted(a) == [
        "manifest.parquet",
        "meta.json",
        "shards/images-00000.npz",
        "shards/images-00001.npz",
        "shards/images-00002.npz",
    ]
    assert a == b
    c = files_of(build(tmp_path, small_params(seed=1), "c"))
    assert c["shards/images-00000.npz"] != a["shards/images-00000.npz"]


def test_load_prepared_contract(tmp_path):
    ds = load_prepared(build(tmp_path, small_params()))
    assert ds.images.dtype == np.uint8 and ds.images.shape == (150, 24, 24, 3)
    assert len(ds) == len(ds.captions) == len(ds.manifest) == 150
    assert ds.labels is None and len(ds.scenes) == 150
    assert set(ds.scenes[0]) >= {"objects", "width", "height"} and ds.scenes[0]["width"] == 24
    assert set(ds.scenes[0]["objects"][0]) >= {"class", "color", "box"}
    meta = ds.meta
    assert meta["name"] == "shapes" and meta["image_size"] == 24 and meta["seed"] == 0 and meta["n"] == 150
    assert "circle" in meta["vocabulary"] and meta["holdout"]["n_prompts"] == 196
    assert list(ds.manifest.columns[:4]) == ["id", "shard", "row", "caption"]
    for col in (
        "source",
        "width",
        "height",
        "mode",
        "pixel_min",
        "pixel_max",
        "pixel_mean",
        "pixel_std",
        "content_hash",
        "label",
        "scene",
        "kind",
    ):
        assert col in ds.manifest.columns
    row = ds.manifest.iloc[77]
    img = ds.images[77]
    assert (row.pixel_min, row.pixel_max) == (img.min(), img.max())
    assert abs(row.pixel_mean - img.mean()) < 1e-3 and abs(row.pixel_std - img.std()) < 1e-3


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return build(tmp_path_factory.mktemp("digits"), small_params("digits", image_size=16))


def test_digits_are_real_labelled_and_resized(digits):
    ds = load_prepared(digits)
    assert ds.images.shape == (1797, 16, 16, 3)
    assert np.array_equal(ds.images[..., 0], ds.images[..., 2])  # grey in all three channels
    assert ds.captions[0] == "a handwritten digit 0" and ds.labels[:3].tolist() == [0, 1, 2]
    assert np.bincount(ds.labels).tolist()[:2] == [178, 182]
    assert ds.meta["vocabulary"] == sorted(["a", "handwritten", "digit", *"0123456789"])


def _samples(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise DataError(f"sample {i}: broken on purpose")
        yield Sample(np.full((8, 8, 3), i, np.uint8), f"a grey square {i}", "grey", f"test:{i}")


def _write(out, n, fail_at=None):
    return _write_with(_samples(n, fail_at), out, n)


def _write_with(samples, out, n):
    return write_prepared(
        samples,
        n,
        out,
        name="grey",
        source="test",
        image_size=8,
        seed=0,
        shard_size=4,
        source_meta={"vocabulary": [], "kinds": ["grey"]},
        progress=False,
    )


def test_a_failed_build_leaves_nothing_that_looks_like_a_dataset(tmp_path):
    out = tmp_path / "prepared" / "grey"
    with pytest.raises(DataError, match="sample 6: broken on purpose"):
        _write(out, 10, fail_at=6)  # fails after one shard was already written
    assert not out.exists() and list(out.parent.iterdir()) == []
    _write(out, 10)
    before = files_of(out)
    with pytest.raises(DataError):
        _write(out, 12, fail_at=9)
    assert files_of(out) == before  # the complete previous dataset is untouched
    assert [p.name for p in out.parent.iterdir()] == ["grey"]
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="not a complete prepared dataset"):
        load_prepared(out)


_SLOW_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.test_data_prepared import _samples, _write_with
def slow(n):
    for s in _samples(n):
        time.sleep(0.3)
        yield s
_write_with(slow(10), sys.argv[2], 10)
"""


def test_two_writers_of_one_dataset_at_once_both_finish_and_only_dead_writers_scratch_is_swept(tmp_path):
    """A writer sweeps the scratch folders that killed writers left, not a live writer's: before, the second of
    two prepares deleted the first's tmp folder under it (FileNotFoundError; seen with two bench runs)."""
    import socket

    out = tmp_path / "prepared" / "grey"
    out.parent.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = out.parent / f".grey.tmp-{socket.gethostname()}-{int(gone.stdout)}"
    (dead / "shards").mkdir(parents=True)
    slow = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(REPO), str(out)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 60
        while not [p for p in out.parent.glob(".grey.tmp-*") if p != dead and (p / "shards").is_dir()]:
            assert slow.poll() is None, slow.stderr.read()[-2000:]
            assert time.time() < deadline, "the slow writer made no scratch folder in 60 s"
            time.sleep(0.05)
        _write(out, 10)  # the same dataset, in this process, while the slow writer is half-way
    finally:
        err = slow.communicate(timeout=60)[1]
    assert slow.returncode == 0, err[-2000:]
    assert not dead.exists()
    assert [p.name for p in out.parent.iterdir()] == ["grey"]
    reference = tmp_path / "alone" / "grey"
    _write(reference, 10)
    assert files_of(out) == files_of(reference)


def test_bad_data_config_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data: unknown key\(s\) \['image_sise'\]"):
        DataConfig.from_dict({"image_sise": 32})
    with pytest.raises(ConfigError, match="data.image_size: expected int"):
        DataConfig.from_dict({"image_size": "big"})
    with pytest.raises(ConfigError, match="data.source: unknown source 'mnist'"):
        DataConfig.from_dict({"name": "mnist"})
    with pytest.raises(ConfigError, match="data.imagefolder.path: required"):
        DataConfig.from_dict({"name": "mine", "source": "imagefolder"})


# ---------------------------------------------------------------- validate


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return build(root, small_params())


def _validate(path: Path, params: dict, tmp_path: Path):
    from flows.stages.validate import validate

    return validate(params, root=tmp_path, dataset=path)


def _failed(summary) -> set[tuple[str, str]]:
    return {(r["expectation"], r["kwargs"].get("column", "")) for r in summary["failed"]}


def _copy(path: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_a_good_dataset_passes_and_gets_a_report(good, tmp_path):
    passed, report, summary = _validate(good, small_params(), tmp_path)
    assert passed, summary["failed"]
    metrics = json.loads((tmp_path / "reports/data/shapes/validation.json").read_text())
    assert metrics["success"] is True and metrics["failed"] == 0 and metrics["expectations"] >= 24
    assert "PASSED" in report.read_text()


def test_changed_pixels_in_a_shard_are_caught(good, tmp_path):
    path = _copy(good, tmp_path)
    shard = path / "shards/images-00001.npz"
    images = read_shard(shard).copy()
    images[5, 3, 3, 1] ^= 0x10
    write_npz(shard, {"images": images})
    passed, report, summary = _validate(path, small_params(), tmp_path)
    assert not passed
    assert _failed(summary) == {
        ("expect_column_values_to_be_in_set", "hash_ok"),
        ("expect_column_values_to_be_in_set", "sha256_ok"),
    }
    text = report.read_text()
    assert "shapes-000069" in text and "shards/images-00001.npz" in text  # the example rows name them


def test_a_truncated_shard_is_caught(good, tmp_path):
    path = _copy(good, tmp_path)
    shard = path / "shards/images-00000.npz"
    shard.write_bytes(shard.read_bytes()[:500])
    passed, _, summary = _validate(path, small_params(), tmp_path)
    assert not passed
    assert {
        ("expect_column_values_to_be_in_set", "readable"),
        ("expect_column_values_to_be_in_set", "hash_ok"),
    } <= _failed(summary)


def test_edited_manifest_rows_are_caught(good, tmp_path):
    path = _copy(good, tmp_path)
    m = pd.read_parquet(path / "manifest.parquet")
    m.loc[3, "caption"] = ""
    m.loc[4, "id"] = m.loc[5, "id"]
    m.loc[6, "caption"] = "a photo of a dragon"
    m.to_parquet(path / "manifest.parquet", index=False)
    passed, report, summary = _validate(path, small_params(), tmp_path)
    assert not passed
    assert _failed(summary) == {
        ("expect_column_values_to_be_unique", "id"),
        ("expect_column_value_lengths_to_be_between", "caption"),
        ("expect_column_values_to_be_between", "n_words"),
        ("expect_column_values_to_be_between", "oov_words"),
    }
    assert "a photo of a dragon" in report.read_text()


def test_dropped_manifest_rows_and_wrong_size_are_caught(good, tmp_path):
    path = _copy(good, tmp_path)
    m = pd.read_parquet(path / "manifest.parquet")
    m.iloc[:-1].to_parquet(path / "manifest.parquet", index=False)
    passed, _, summary = _validate(path, small_params(image_size=32), tmp_path)
    assert not passed
    failed = _failed(summary)
    assert ("expect_table_row_count_to_equal", "") in failed
    in_set = "expect_column_values_to_be_in_set"
    assert {(in_set, "width"), (in_set, "height"), (in_set, "shape_ok"), (in_set, "rows_ok")} <= failed


def test_duplicates_over_the_threshold_are_caught(good, tmp_path):
    path = _copy(good, tmp_path)
    params = small_params()
    params["validate"] = {"max_duplicate_fraction": 0.0}
    shard = path / "shards/images-00000.npz"
    images = read_shard(shard).copy()
    images[1] = images[0]
    write_npz(shard, {"images": images})
    m = pd.read_parquet(path / "manifest.parquet")
    m.loc[1, "content_hash"] = m.loc[0, "content_hash"]
    m.to_parquet(path / "manifest.parquet", index=False)
    passed, report, summary = _validate(path, params, tmp_path)
    assert ("expect_column_proportion_of_unique_values_to_be_between", "content_hash") in _failed(summary)
    assert "shapes-000001" in report.read_text()


def test_validate_stage_fails_with_one_line_and_a_report(good, tmp_path, capsys):
    from flows.stages.validate import main

    root = tmp_path / "repo"
    ds = root / "data/prepared/shapes"
    ds.parent.mkdir(parents=True)
    os.symlink(good, ds)
    (root / "params.yaml").write_text(yaml.safe_dump(small_params()))
    assert main(["--root", str(root)]) == 0
    capsys.readouterr()
    assert main(["--root", str(root), "--set", "data.image_size=28"]) == 11
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("validate: error: shapes: ")
    assert "expect_column_values_to_be_in_set(width)" in err[0] and "reports/data/shapes/validation.md" in err[0]
    assert "FAILED" in (root / "reports/data/shapes/validation.md").read_text()


def test_prepare_stage_bad_config_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"name": "shapes", "imge_size": 3}}))
    r = subprocess.run(
        [sys.executable, "-m", "flows.stages.prepare", "--root", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 10
    assert r.stderr.strip().splitlines() == [
        "prepare: error: data: unknown key(s) ['imge_size']; known: "
        "['digits', 'image_size', 'imagefolder', 'name', 'seed', "
        "'shapes', 'shard_size', 'source']"
    ]
    assert not (tmp_path / "data").exists()


def test_label_coverage_and_balance_are_checked(digits, tmp_path):
    params = small_params("digits", image_size=16)
    passed, _, summary = _validate(digits, params, tmp_path)
    assert passed, summary["failed"]
    path = _copy(digits, tmp_path)
    m = pd.read_parquet(path / "manifest.parquet")
    m.loc[m["label"].isin([3, 4]), "label"] = 8  # 3 and 4 go missing, 8 becomes ~3x an even share
    m.to_parquet(path / "manifest.parquet", index=False)
    passed, report, summary = _validate(path, params, tmp_path)
    assert _failed(summary) == {
        ("expect_column_distinct_values_to_contain_set", "label"),
        ("expect_column_values_to_be_between", "label_share"),
    }

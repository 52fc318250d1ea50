"""`prepare` streams: a shard is deflated image by image (peak memory one image, not the shard: a 4,096-image
shard at 512 px is 3.2 GB of uint8, and its float64 statistics were 24 GiB), the bytes stay those of the stacked
shard, and a dataset that cannot fit on disk is refused in one line before anything is written."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import yaml

from twinflow_core.data.prepared import read_manifest, read_rows, read_shard, write_npz, write_prepared
from twinflow_core.data.sample import Sample

REPO = Path(__file__).resolve().parents[1]


def _noise(n, size):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield Sample(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), f"noise {i}", "noise", f"t:{i}")


def test_shard_bytes_equal_the_stacked_write_and_memory_holds_one_image(tmp_path):
    import tqdm  # noqa: F401  imported before the count: their import is not the data

    n, size = 24, 256
    tracemalloc.start()
    write_prepared(
        _noise(n, size),
        n,
        tmp_path / "ds",
        name="noise",
        source="test",
        image_size=size,
        seed=0,
        shard_size=16,
        source_meta={},
        progress=False,
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    image = size * size * 3
    # before: the stacked shard (16 images) plus its float64 copy (8 bytes per pixel), 144 images' worth;
    # now a few images and the 1 MB blocks file_sha256 reads
    assert peak < 2**21 + 8 * image, f"peak {peak} bytes, one image is {image}"
    stacked = np.stack([s.image for s in _noise(n, size)])
    for k, (lo, hi) in enumerate([(0, 16), (16, 24)]):
        shard = tmp_path / "ds" / "shards" / f"images-{k:05d}.npz"
        write_npz(tmp_path / "ref.npz", {"images": stacked[lo:hi]})
        assert shard.read_bytes() == (tmp_path / "ref.npz").read_bytes()
        assert np.array_equal(read_shard(shard), stacked[lo:hi])
        assert np.array_equal(read_rows(shard, [5, 1]), stacked[lo:hi][[5, 1]])
    frame = read_manifest(tmp_path / "ds")
    flat = stacked.reshape(n, -1)
    assert np.allclose(frame["pixel_std"], flat.std(axis=1).round(4))
    assert list(frame["pixel_max"]) == [int(v) for v in flat.max(axis=1)]


def test_a_dataset_larger_than_the_free_disk_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {
                    "name": "shapes",
                    "image_size": 512,
                    "shapes": {"n_images": 50_000_000, "holdout_dir": str(REPO / "data/prompts")},
                }
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "flows.stages.prepare", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 11, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "GB of shards" in lines[0] and "GB free" in lines[0], proc.stderr
    assert not (tmp_path / "data" / "prepared").exists() or not any((tmp_path / "data" / "prepared").iterdir())

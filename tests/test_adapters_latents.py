"""Latent shards: the shapes world encoded once by a tiny SD3 pipeline's frozen VAE and text encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from twinflow_core.data.config import DataConfig  # noqa: E402
from twinflow_core.data.latents import LatentEncoder, LatentMicroBatches, load_latents, write_latents  # noqa: E402
from twinflow_core.data.prepared import prepare  # noqa: E402
from twinflow_core.errors import DataError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    from twinflow_core.adapters.tiny import tiny_sd3_pipeline

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lat")
    cfg = DataConfig.from_dict(
        {
            "name": "shapes",
            "image_size": 32,
            "shard_size": 64,
            "shapes": {"n_images": 24, "holdout_dir": str(REPO / "data/prompts")},
        }
    )
    data_dir, meta, _ = prepare(cfg, root=REPO, out=root / "shapes", progress=False)
    words = sorted(meta["vocabulary"])
    pipe = tiny_sd3_pipeline(words, seed=0)
    enc = LatentEncoder(pipe, "sd3", 16)
    out = root / "shapes-sd3-latents"
    write_latents(data_dir, out, enc, source="tiny-sd3", batch=8, shard_size=16)
    return data_dir, out, enc


def test_latent_shards_hold_latents_embeddings_and_the_null_prompt(encoded):
    data_dir, out, enc = encoded
    lat = load_latents(out)
    assert lat.latents.shape == (24, 4, 16, 16) and len(lat.meta["shards"]) == 2
    assert lat.cond["prompt_embeds"].shape[0] == 24 and lat.cond["pooled"].shape == (24, 32)
    assert lat.null["prompt_embeds"].shape[0] == 1
    # the stored rows are what the encoder gives for those images and captions
    from twinflow_core.data.prepared import load_prepared

    data = load_prepared(data_dir)
    again = enc(data.images[3:5], data.captions[3:5])
    assert torch.allclose(again["latents"], lat.latents[3:5], atol=1e-6)
    assert torch.allclose(again["pooled"], lat.cond["pooled"][3:5], atol=1e-6)
    assert not torch.allclose(lat.null["pooled"][0], lat.cond["pooled"][0])


def test_micro_batches_drop_captions_to_the_null_prompt(encoded):
    _, out, _ = encoded
    lat = load_latents(out)
    batches = LatentMicroBatches(lat, micro=8, micro_per_step=1, seed=0, cond_drop=0.5)
    b = batches[(0, 0)]
    assert b["x"].shape == (8, 4, 16, 16) and b["uncond"]["pooled"].shape == (8, 32)
    dropped = (b["cond"]["pooled"] == lat.null["pooled"]).all(dim=1)
    assert 0 < int(dropped.sum()) < 8
    assert torch.equal(batches[(0, 0)]["x"], b["x"])  # same key, same rows


def test_a_damaged_shard_is_a_one_line_error(encoded, tmp_path):
    import shutil

    _, out, _ = encoded
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / "shards" / "latents-00001.npz"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="latents-00001.npz: sha256 differs"):
        load_latents(copy)

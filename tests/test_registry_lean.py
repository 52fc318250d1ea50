"""A registered version is lean: the trained transformer (full; optionally bf16) or the adapter (LoRA) and a
pinned reference to the base pipeline, plus a model card; no optimiser, EMA or base weights, and no second copy
of the weights. The version, fetched as `twinflow generate` fetches it, draws the same images as the training
output it came from (its base resolved from the reference); a changed base is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from support.threads import one_thread  # noqa: E402,F401  (autouse)

WORDS = ["a", "photo", "of", "red", "blue", "circle", "square"]
CAPTIONS = ["a photo of a red circle", "a blue square"]


def _sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_lean_version_draws_what_its_training_output_draws_and_weighs_little_more_than_its_weights(
    finetune, tmp_path, monkeypatch
):
    from flows.model_card import lean_version
    from twinflow_core.adapters.codec import load_pipeline
    from twinflow_core.adapters.generator_files import generator_meta, save_latent_generator, wrap_base
    from twinflow_core.adapters.lora import add_lora
    from twinflow_core.adapters.tiny import save_tiny_pipeline
    from twinflow_core.adapters.velocity import TransformerVelocity, load_transformer, load_velocity
    from twinflow_core.checkpoint import fetch_generator, load_generator
    from twinflow_core.errors import CheckpointError

    monkeypatch.chdir(tmp_path)
    base = save_tiny_pipeline(Path("models/base"), "sd3", WORDS)
    wrap_base(base, "sd3", 32, 16)
    torch.manual_seed(0)
    pipe = load_pipeline(str(base), "sd3", transformer=False)
    if finetune == "full":
        net = load_velocity(str(base), "sd3", "gated", subfolder="transformer")
    else:
        net = TransformerVelocity(load_transformer(str(base), "sd3", "transformer"), "sd3", time_input="half")
        add_lora(net, rank=4, alpha=4)
    with torch.no_grad():  # as after training: every weight moved
        for p in net.parameters():
            if p.requires_grad or finetune == "full":
                p.add_(torch.randn_like(p) * 0.02)
    out = save_latent_generator(
        Path("checkpoints/twinflow"),
        net,
        pipe,
        generator_meta("sd3", "half" if finetune == "lora" else "gated", pipe, 32, 16),
    )
    (out / "state.ckpt").write_bytes(b"\0" * 3_000_000)  # what a training output also holds: never registered
    params = {
        "model": {"name": "diffusers", "family": "sd3", "source": "models/base", "finetune": finetune},
        "train": {"init": "models/base", "steps": 6},
        "objective": {"train": {"preset": "twinflow"}},
    }
    scores = {"geneval-shapes/overall@1nfe": 0.25}
    tags = {"lineage.data_md5": "d" * 32, "lineage.data_path": "data/latents/shapes"}
    lean = lean_version(tmp_path, out, tmp_path / "version", params, scores, tags)
    sizes = _sizes(lean)
    assert "state.ckpt" not in sizes and "model.safetensors" not in sizes and "vae" not in " ".join(sizes)
    card = (lean / "MODEL_CARD.md").read_text()
    assert "d" * 32 in card and "geneval-shapes/overall@1nfe: 0.25" in card and "from_pretrained" in card
    if finetune == "lora":
        adapter = (out / "lora" / "pytorch_lora_weights.safetensors").stat().st_size
        assert sum(sizes.values()) <= 1.2 * adapter + 100_000, sizes
        assert "load_lora_weights" in card
    else:
        weights = (out / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
        assert sum(sizes.values()) <= 1.05 * weights + 100_000, sizes  # + the card and model.json
    print(finetune, "version bytes", sum(sizes.values()), sizes)

    fetched = fetch_generator(str(lean), tmp_path / "fetched")  # as `twinflow generate` gets it
    expected = load_generator(out).generate(CAPTIONS, nfe=2, seed=3)
    got = load_generator(fetched).generate(CAPTIONS, nfe=2, seed=3)
    assert np.array_equal(got, expected)
    meta = json.loads((fetched / "model.json").read_text())
    assert meta["base"]["source"] == "models/base" and len(meta["base"]["model_json_sha256"]) == 64

    # the base found from the project by its source when its recorded path is gone; a changed base is refused
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "models"), moved / "models")
    monkeypatch.chdir(moved)
    assert np.array_equal(load_generator(fetched).generate(CAPTIONS, nfe=2, seed=3), expected)
    (moved / "models" / "base" / "model.json").write_text(
        (moved / "models" / "base" / "model.json").read_text().replace('"image_size": 32', '"image_size": 64')
    )
    with pytest.raises(CheckpointError, match="not the one it was trained from"):
        load_generator(fetched)


def test_a_full_version_in_bf16_is_half_the_bytes_and_draws_close(tmp_path, monkeypatch):
    from flows.model_card import lean_version
    from twinflow_core.adapters.codec import load_pipeline
    from twinflow_core.adapters.generator_files import generator_meta, save_latent_generator, wrap_base
    from twinflow_core.adapters.tiny import save_tiny_pipeline
    from twinflow_core.adapters.velocity import load_velocity
    from twinflow_core.checkpoint import load_generator

    monkeypatch.chdir(tmp_path)
    base = save_tiny_pipeline(Path("models/base"), "sd3", WORDS)
    wrap_base(base, "sd3", 32, 16)
    torch.manual_seed(0)
    pipe = load_pipeline(str(base), "sd3", transformer=False)
    net = load_velocity(str(base), "sd3", "gated", subfolder="transformer")
    out = save_latent_generator(Path("ckpt"), net, pipe, generator_meta("sd3", "gated", pipe, 32, 16))
    params = {
        "model": {"name": "diffusers", "family": "sd3"},
        "train": {"init": "models/base"},
        "register": {"weights_dtype": "bfloat16"},
    }
    lean = lean_version(tmp_path, out, tmp_path / "v", params, {}, {})
    w32 = (out / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
    w16 = (lean / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert w16 < 0.6 * w32
    a = load_generator(out).generate(CAPTIONS, nfe=1, seed=0).astype(float)
    b = load_generator(lean).generate(CAPTIONS, nfe=1, seed=0).astype(float)
    assert np.abs(a - b).mean() < 2.0  # bf16 rounding of the weights, in uint8 pixel units

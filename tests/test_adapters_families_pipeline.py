"""Qwen-Image and SANA as whole tiny pipelines (twinflow_core/adapters/tiny.py): their own text encoders,
tokenizers and VAEs (Qwen2.5-VL + Qwen2Tokenizer + AutoencoderKLQwenImage; Gemma2 + GemmaTokenizer +
AutoencoderDC) saved and reloaded by diffusers, then every path of this project that goes through them: prompt
encoding (the condition TransformerVelocity takes, the null prompt), the latent codec against the pipeline's own
decode, latent shards of the shapes world, TwinFlow steps from those shards, and the exported generator at 1 NFE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from support.threads import one_thread  # noqa: E402,F401  (autouse)

from twinflow_core.adapters.codec import decode_latents, encode_images, encode_prompts, load_pipeline  # noqa: E402
from twinflow_core.adapters.families import get_family  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["qwen_image", "sana"]
CHANNELS = {"qwen_image": 16, "sana": 4}  # the VAEs' latent channels (Qwen-Image's real 16; the tiny DC-AE 4)
MAX_LEN = 16
BUILT = {}  # family -> the pipeline as built, before saving
CAPTIONS = ["a photo of a red circle", "two blue squares", "a green triangle to the left of a red square"]


@pytest.fixture(scope="module", params=FAMILIES)
def world(request, tmp_path_factory):
    """The shapes world (16 images, 32 px), a tiny pipeline of the family whose tokenizer knows its words, saved
    as a pipeline folder, wrapped as a base generator, and reloaded from the folder by diffusers."""
    from twinflow_core.adapters.generator_files import wrap_base
    from twinflow_core.adapters.tiny import TINY_PIPELINES
    from twinflow_core.data.config import DataConfig
    from twinflow_core.data.prepared import prepare

    family = request.param
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(family)
    cfg = DataConfig.from_dict(
        {
            "name": "shapes",
            "image_size": 32,
            "shard_size": 64,
            "shapes": {"n_images": 16, "holdout_dir": str(REPO / "data/prompts")},
        }
    )
    data_dir, meta, _ = prepare(cfg, root=REPO, out=root / "shapes", progress=False)
    built = TINY_PIPELINES[family](sorted(meta["vocabulary"]), seed=0, image_size=32)
    folder = root / "pipe"
    built.save_pretrained(str(folder), safe_serialization=True)
    wrap_base(folder, family, 32, MAX_LEN)
    BUILT[family] = built
    return family, data_dir, folder, load_pipeline(str(folder), family)


def test_the_tiny_pipeline_reloads_as_saved(world):
    import diffusers

    family, _, folder, pipe = world
    built = BUILT[family]
    assert type(pipe).__name__ == get_family(family).pipeline_class
    assert type(pipe.tokenizer).__name__ == {"qwen_image": "Qwen2Tokenizer", "sana": "GemmaTokenizer"}[family]
    for part in ("text_encoder", "vae", "transformer"):
        a, b = getattr(pipe, part).state_dict(), getattr(built, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert pipe.tokenizer(CAPTIONS)["input_ids"] == built.tokenizer(CAPTIONS)["input_ids"]
    assert encode_prompts(pipe, family, CAPTIONS, MAX_LEN)["prompt_embeds"].equal(
        encode_prompts(built, family, CAPTIONS, MAX_LEN)["prompt_embeds"]
    )
    assert not list(folder.rglob("*.bin")) and sum(f.stat().st_size for f in folder.rglob("*")) < 2_000_000
    # the folder is a plain diffusers pipeline that samples by itself
    plain = getattr(diffusers, get_family(family).pipeline_class).from_pretrained(str(folder))
    extra = {"use_resolution_binning": False} if family == "sana" else {"true_cfg_scale": 1.0}
    out = plain(
        prompt=CAPTIONS[:2],
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        max_sequence_length=MAX_LEN,
        **extra,
    ).images
    assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all()


def test_prompts_encode_to_the_condition_the_transformer_takes(world):
    from twinflow_core.adapters.velocity import TransformerVelocity

    family, _, _, pipe = world
    cond = encode_prompts(pipe, family, CAPTIONS, MAX_LEN)
    null = encode_prompts(pipe, family, [""], MAX_LEN)
    assert set(cond) == set(get_family(family).cond_keys) == set(null)
    assert cond["prompt_embeds"].shape == (3, MAX_LEN, 32) and cond["prompt_embeds"].dtype == torch.float32
    assert null["prompt_embeds"].shape == (1, MAX_LEN, 32)
    assert cond["mask"].shape == (3, MAX_LEN) and cond["mask"].dtype == torch.long
    assert set(cond["mask"].unique().tolist()) <= {0, 1}
    lengths = cond["mask"].sum(1).tolist()
    assert lengths[0] < lengths[2] <= MAX_LEN and int(null["mask"].sum()) >= 1  # longer caption, more tokens
    assert torch.isfinite(cond["prompt_embeds"]).all() and torch.isfinite(null["prompt_embeds"]).all()
    assert not torch.allclose(null["prompt_embeds"][0], cond["prompt_embeds"][0])
    if family == "qwen_image":  # padded by us: the positions past a prompt hold zeros
        assert (cond["prompt_embeds"][cond["mask"] == 0] == 0).all()

    net = TransformerVelocity(pipe.transformer, family).eval()
    x = torch.randn(3, CHANNELS[family], 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.9, 0.5, 0.2])
    with torch.no_grad():
        v = net(x, t, t * 0.5, cond)
        # a longer padding changes nothing: the transformer masks what the encoder padded
        longer = encode_prompts(pipe, family, CAPTIONS, MAX_LEN + 8)
        assert longer["prompt_embeds"].shape[1] == MAX_LEN + 8
        assert torch.allclose(net(x, t, t * 0.5, longer), v, atol=1e-5)
        # and one row's velocity does not depend on the other rows it is batched with
        assert torch.allclose(net(x[:1], t[:1], t[:1] * 0.5, {k: c[:1] for k, c in cond.items()}), v[:1], atol=1e-5)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_latents_decode_as_the_pipeline_decodes_them(world):
    """encode_images -> decode_latents: the right shapes and dtypes; decode_latents gives the pipeline's own
    images for the latents the pipeline sampled (its VAE normalisation: Qwen-Image's per-channel mean / std on
    5-D latents, SANA's DC-AE scaling factor); and encode_images is its inverse normalisation."""
    from twinflow_core.checkpoint import to_data
    from twinflow_core.data.prepared import load_prepared

    family, data_dir, _, pipe = world
    images = load_prepared(data_dir).images[:4]
    lat = encode_images(pipe.vae, to_data(images))
    assert lat.shape == (4, CHANNELS[family], 16, 16) and lat.dtype == torch.float32
    back = decode_latents(pipe.vae, lat)
    assert back.shape == (4, 32, 32, 3) and back.dtype == np.uint8

    # the same images as the VAE's own round trip of the raw latents: the normalisation cancels
    x = to_data(images).to(pipe.vae.dtype)
    if family == "qwen_image":
        raw = pipe.vae.decode(pipe.vae.encode(x.unsqueeze(2)).latent_dist.mean, return_dict=False)[0][:, :, 0]
    else:
        raw = pipe.vae.decode(pipe.vae.encode(x).latent, return_dict=False)[0]
    from twinflow_core.checkpoint import to_pixels

    assert np.abs(back.astype(int) - to_pixels(raw.float().clamp(-1, 1)).astype(int)).max() <= 1

    # the pipeline's sampled latents, decoded by us and by the pipeline
    extra = {"use_resolution_binning": False} if family == "sana" else {"true_cfg_scale": 1.0}
    kw = dict(prompt=CAPTIONS[:2], num_inference_steps=2, height=32, width=32, max_sequence_length=MAX_LEN, **extra)
    mine = pipe(**kw, output_type="latent", generator=torch.Generator().manual_seed(1)).images
    theirs = pipe(**kw, output_type="np", generator=torch.Generator().manual_seed(1)).images
    if family == "qwen_image":  # packed (B, 64 tokens, 64): the transformer's layout
        mine = pipe._unpack_latents(mine, 32, 32, pipe.vae_scale_factor)[:, :, 0]
    ours = decode_latents(pipe.vae, mine)
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


@pytest.fixture(scope="module")
def shards(world, tmp_path_factory):
    from twinflow_core.data.latents import LatentEncoder, write_latents

    family, data_dir, _, pipe = world
    out = tmp_path_factory.mktemp(f"{family}-lat") / f"shapes-{family}-latents"
    meta = write_latents(data_dir, out, LatentEncoder(pipe, family, MAX_LEN), source="tiny", batch=5, shard_size=8)
    return out, meta


def test_latent_shards_are_written_validated_and_batched(world, shards):
    from twinflow_core.data.latents import LatentMicroBatches, load_latents

    family = world[0]
    out, meta = shards
    assert meta["latent_shape"] == [CHANNELS[family], 16, 16] and meta["keys"] == ["latents", "mask", "prompt_embeds"]
    lat = load_latents(out)
    assert lat.latents.shape == (16, CHANNELS[family], 16, 16) and len(meta["shards"]) == 2
    assert lat.cond["prompt_embeds"].shape == (16, MAX_LEN, 32) and lat.cond["mask"].dtype == torch.int64
    assert lat.null["prompt_embeds"].shape == (1, MAX_LEN, 32)
    b = LatentMicroBatches(lat, micro=4, micro_per_step=1, seed=0, cond_drop=0.5)[(0, 0)]
    assert b["x"].shape == (4, CHANNELS[family], 16, 16) and b["uncond"]["mask"].shape == (4, MAX_LEN)
    dropped = (b["cond"]["mask"] == lat.null["mask"]).all(1) & (
        b["cond"]["prompt_embeds"] == lat.null["prompt_embeds"]
    ).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < 4  # some captions dropped to the null prompt, not all


def test_twinflow_steps_on_the_shards_lower_the_loss_and_export_a_generator(world, shards, tmp_path):
    """train.init = the wrapped pipeline folder (training/latent.py build_net), the shards through the training
    data module, the Lightning module and objective of every run; then the export the train stage writes, loaded
    back as the generator evaluation and the pyfunc use, drawing 1-NFE images through the family's VAE."""
    import lightning as L
    from test_adapters_train import eval_losses

    from twinflow_core.adapters.generator_files import generator_meta, save_latent_generator
    from twinflow_core.adapters.pipeline import load_latent_generator
    from twinflow_core.data.latents import load_latents
    from twinflow_core.objective import ObjectiveConfig
    from twinflow_core.training.config import PretrainedModelConfig
    from twinflow_core.training.data import LatentDataModule
    from twinflow_core.training.latent import build_net
    from twinflow_core.training.module import TwinFlowModule

    family, _, folder, _ = world
    out, _ = shards
    model = PretrainedModelConfig(family=family, source=str(folder), image_size=32, max_sequence_length=MAX_LEN)
    parts = build_net(str(folder), model, seed=0, ema_decay=0.0)  # the online teacher (Qwen-Image's rule)
    net = parts.net
    lat = load_latents(out)
    x, cond = lat.latents[:8], {k: v[:8] for k, v in lat.cond.items()}
    uncond = {k: v.expand(8, *v.shape[1:]) for k, v in lat.null.items()}
    before = eval_losses(net, x, cond, uncond)
    r_before = {k: v.clone() for k, v in net.r_embedding.state_dict().items()}
    module = TwinFlowModule(
        net,
        ObjectiveConfig.preset("twinflow", enhanced_ratio=0.5),
        lr=1e-3,
        betas=(0.9, 0.99),
        weight_decay=0.0,
        ema_decay=0.0,
        grad_clip=1.0,
        seed=0,
        accumulate=1,
        null_ids=torch.zeros(1, 1, dtype=torch.long),
        teacher=parts.teacher,
    )
    steps = 20
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=LatentDataModule(str(out), steps, 8, 8, seed=0, cond_drop=0.1))
    after = eval_losses(net, x, cond, uncond)
    assert after[1] < 0.95 * before[1] and after[0] < 1.1 * before[0], (before, after)
    assert any(not torch.equal(v, net.r_embedding.state_dict()[k]) for k, v in r_before.items())

    meta = generator_meta(family, "gated", parts.pipe, 32, MAX_LEN)
    assert (meta["latent_channels"], meta["latent_size"]) == (CHANNELS[family], 16)
    gen_folder = save_latent_generator(tmp_path / "gen", module.generator_net(), parts.pipe, meta)
    gen = load_latent_generator(gen_folder)
    with torch.no_grad():
        t = torch.full((8,), 0.7)
        assert torch.equal(gen.net(x, t, t * 0, cond), module.generator_net()(x, t, t * 0, cond))
    images = gen.generate(CAPTIONS, nfe=1, seed=0)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert (images == gen.generate(CAPTIONS, nfe=1, seed=0)).all()
    assert not (images == gen.generate(CAPTIONS, nfe=1, seed=1)).all()
    assert gen.generate(CAPTIONS[:1], nfe=2, seed=0).shape == (1, 32, 32, 3)
    # the training pipeline was loaded without its transformer: the export still names it, so a plain diffusers
    # pipeline loads the folder with the trained transformer
    import diffusers

    plain = getattr(diffusers, get_family(family).pipeline_class).from_pretrained(str(gen_folder))
    assert plain.transformer is not None and torch.equal(
        plain.transformer.state_dict()["proj_out.weight"], gen.net.transformer.state_dict()["proj_out.weight"]
    )


def test_the_wrapped_base_generates_at_its_image_size(world):
    """wrap_base reads the family's VAE config (Qwen-Image: z_dim and temperal_downsample; DC-AE: its encoder
    stages) for the latent geometry; the base generator draws from it."""
    import json

    from twinflow_core.adapters.generator_files import wrap_base
    from twinflow_core.adapters.pipeline import load_latent_generator
    from twinflow_core.errors import ConfigError

    family, _, folder, _ = world
    meta = json.loads((folder / "model.json").read_text())
    assert (meta["latent_channels"], meta["latent_size"], meta["family"]) == (CHANNELS[family], 16, family)
    before = (folder / "model.json").read_bytes()
    with pytest.raises(ConfigError, match=r"image_size 33 is not a multiple of \d \(the VAE's downsampling 2 x"):
        wrap_base(folder, family, 33, MAX_LEN)
    if family == "qwen_image":  # 34 px: 17x17 latents, which do not pack into 2x2 patches
        with pytest.raises(
            ConfigError,
            match=r"not a multiple of 4 \(the VAE's downsampling 2 x the transformer's "
            r"patch 2\)",
        ):
            wrap_base(folder, family, 34, MAX_LEN)
    assert (folder / "model.json").read_bytes() == before  # a refused wrap leaves the folder as it was
    gen = load_latent_generator(folder)
    images = gen.generate(CAPTIONS[:2], nfe=1, seed=0)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    # the evaluator's domain check reads the tokenizer's words (whole words in the learned BPE vocabulary)
    assert {"circle", "square", "triangle", "cross", "red"} <= set(gen.tokenizer.vocabulary)


def test_the_encode_stage_writes_the_same_shards_from_the_pipeline_folder(world, shards, tmp_path):
    """flows/stages/encode.py on the wrapped pipeline folder (train.init), in-process: the shards it writes are the
    ones write_latents gives through the pipeline loaded above, row for row."""
    import yaml

    from flows.stages.encode import run
    from twinflow_core.data.latents import load_latents
    from twinflow_core.training.config import PretrainedModelConfig, to_dict

    family, data_dir, folder, _ = world
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"] = to_dict(
        PretrainedModelConfig(family=family, source=str(folder), image_size=32, max_sequence_length=MAX_LEN)
    )
    params["train"]["init"] = str(folder)
    params["encode"] = {"data": str(data_dir), "out": str(tmp_path / "latents"), "batch": 5, "shard_size": 8}
    meta = run(params)
    assert meta["family"] == family and meta["model"] == str(folder) and meta["n"] == 16
    mine, direct = load_latents(tmp_path / "latents"), load_latents(shards[0])
    assert torch.equal(mine.latents, direct.latents)
    assert all(torch.equal(mine.cond[k], direct.cond[k]) for k in direct.cond)
    assert all(torch.equal(mine.null[k], direct.null[k]) for k in direct.null)


def test_the_tiny_writer_cli_writes_a_wrapped_pipeline_of_the_family(world, tmp_path, capsys):
    import json

    from twinflow_core.adapters.tiny import main

    family = world[0]
    main([str(tmp_path / "p"), "--family", family, "--words-from", "shapes", "--wrap", "--max-len", "12"])
    assert f"tiny {family} pipeline" in capsys.readouterr().out
    meta = json.loads((tmp_path / "p" / "model.json").read_text())
    assert (meta["family"], meta["max_sequence_length"], meta["latent_channels"]) == (family, 12, CHANNELS[family])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "q"), "--family", family, "--sd35"])


def test_a_lora_generator_reloads_and_its_weights_load_into_the_plain_pipeline(world, tmp_path):
    """The official LoRA form (native embedding fed t - r/2) on these families: the export reloads into the same
    velocities, draws at 1 NFE, and its diffusers-format weights change a plain pipeline's output."""
    import diffusers

    from twinflow_core.adapters.generator_files import generator_meta, save_latent_generator
    from twinflow_core.adapters.lora import add_lora
    from twinflow_core.adapters.pipeline import load_latent_generator
    from twinflow_core.adapters.velocity import TransformerVelocity, load_transformer

    family, _, folder, pipe = world
    net = TransformerVelocity(load_transformer(str(folder), family, "transformer"), family, time_input="half")
    torch.manual_seed(0)
    add_lora(net, rank=4, alpha=4)
    with torch.no_grad():  # as after some training: gaussian-init LoRA starts as a no-op (B = 0)
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    base = load_pipeline(str(folder), family)
    gen_folder = save_latent_generator(tmp_path / "gen", net, base, generator_meta(family, "half", base, 32, MAX_LEN))
    gen = load_latent_generator(gen_folder)
    x = torch.randn(3, CHANNELS[family], 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.ones(3)
    cond = encode_prompts(pipe, family, CAPTIONS, MAX_LEN)
    with torch.no_grad():
        assert torch.allclose(gen.net(x, t, t * 0, cond), net(x, t, t * 0, cond), atol=1e-6)
    assert gen.generate(CAPTIONS, nfe=1, seed=0).shape == (3, 32, 32, 3)

    plain = getattr(diffusers, get_family(family).pipeline_class).from_pretrained(str(gen_folder))
    extra = {"use_resolution_binning": False} if family == "sana" else {"true_cfg_scale": 1.0}
    kw = dict(
        prompt=CAPTIONS[:2],
        num_inference_steps=1,
        height=32,
        width=32,
        output_type="np",
        max_sequence_length=MAX_LEN,
        **extra,
    )
    before = plain(**kw, generator=torch.Generator().manual_seed(0)).images
    plain.load_lora_weights(str(gen_folder / "lora"))
    after = plain(**kw, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(after - before).max() > 1e-3

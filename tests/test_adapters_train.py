"""TwinFlow training of a tiny SD3 (full and LoRA) through the unchanged objective and the Lightning module,
with each teacher rule; export as a diffusers pipeline folder that reloads into the same generator interface."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from twinflow_core.adapters.codec import encode_prompts  # noqa: E402
from twinflow_core.adapters.generator_files import generator_meta, save_latent_generator  # noqa: E402
from twinflow_core.adapters.lora import LoraTeacher, add_lora  # noqa: E402
from twinflow_core.adapters.pipeline import load_latent_generator  # noqa: E402
from twinflow_core.adapters.tiny import tiny_sd3_pipeline  # noqa: E402
from twinflow_core.adapters.velocity import TransformerVelocity  # noqa: E402
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective  # noqa: E402

WORDS = ["a", "red", "blue", "circle", "square", "on", "left", "right"]
CAPTIONS = ["a red circle", "a blue square", "a red square on left", "a blue circle on right"] * 2


from support.threads import one_thread  # noqa: E402,F401  (autouse)


@pytest.fixture(scope="module")
def batch():
    """Fixed latents (VAE-encoded blobs) and their prompt embeddings from a tiny SD3 pipeline."""
    from twinflow_core.adapters.codec import encode_images

    pipe = tiny_sd3_pipeline(WORDS, seed=0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    imgs = []
    for i in range(len(CAPTIONS)):
        cx = -0.4 if i % 2 else 0.4
        blob = ((xx - cx) ** 2 + yy**2 < 0.2).float()
        imgs.append(torch.stack([blob * (1 if i % 2 == 0 else -1), -blob, blob * 0.5]) * 0.8)
    x = encode_images(pipe.vae, torch.stack(imgs))
    x = x / x.std()  # unit-scale latents, as a real VAE's scaling factor gives
    cond = encode_prompts(pipe, "sd3", CAPTIONS, 8)
    null = encode_prompts(pipe, "sd3", [""], 8)
    uncond = {k: v.expand(len(CAPTIONS), *v.shape[1:]) for k, v in null.items()}
    return pipe, x, cond, uncond


@torch.no_grad()
def eval_losses(net, x, cond, uncond):
    """(TwinFlow loss, flow-matching loss) at fixed noise. The TwinFlow loss is not stationary (its targets come
    from the model itself: RCGM rollout, its own 1-step samples on the twin branch), so a short run is also
    judged by the flow-matching loss, whose target is fixed and which the mul bucket trains."""
    out = []
    for preset, kw in (("twinflow", {"enhanced_ratio": 0.5}), ("fm", {})):
        torch.manual_seed(123)
        out.append(float(TwinFlowObjective(ObjectiveConfig.preset(preset, **kw))(net, x, cond, uncond)[0]))
    return out


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, x, cond, uncond, steps):
        self.x, self.cond, self.uncond, self.steps = x, cond, uncond, steps

    def __iter__(self):
        for step in range(self.steps):
            yield {"x": self.x, "cond": self.cond, "uncond": self.uncond, "step": step, "micro": 0}


def fit(net, teacher, data, steps, lr):
    import lightning as L

    from twinflow_core.training.module import TwinFlowModule

    _, x, cond, uncond = data
    module = TwinFlowModule(
        net,
        ObjectiveConfig.preset("twinflow", enhanced_ratio=0.5),
        lr=lr,
        betas=(0.9, 0.99),
        weight_decay=0.0,
        ema_decay=teacher.decay if teacher else 0.99,
        grad_clip=1.0,
        seed=0,
        accumulate=1,
        null_ids=torch.zeros(1, 1, dtype=torch.long),
        teacher=teacher,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(Batches(x, cond, uncond, steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return module


def test_full_fine_tuning_with_ema_lowers_the_loss_and_exports_a_pipeline(batch, tmp_path):
    pipe, x, cond, uncond = batch
    net = TransformerVelocity(tiny_sd3_pipeline(WORDS, seed=0).transformer, "sd3")
    net.transformer.enable_gradient_checkpointing()
    before = eval_losses(net, x, cond, uncond)
    base_r = {k: v.clone() for k, v in net.r_embedding.state_dict().items()}
    module = fit(net, None, batch, steps=20, lr=3e-4)
    after = eval_losses(net, x, cond, uncond)
    assert after[1] < 0.95 * before[1] and after[0] < 1.1 * before[0], (before, after)
    assert module.ema.model is not None and module.ema.current > 0.85  # the EMA copy warmed up
    assert any(not torch.equal(v, net.r_embedding.state_dict()[k]) for k, v in base_r.items())

    gen_net = module.generator_net()
    meta = generator_meta("sd3", "gated", pipe, 32, 8)
    folder = save_latent_generator(tmp_path / "gen", gen_net, pipe, meta)
    assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
    gen = load_latent_generator(folder)
    with torch.no_grad():
        t = torch.full((len(x),), 0.7)
        assert torch.equal(gen.net(x, t, t * 0, cond), gen_net(x, t, t * 0, cond))
    images = gen.generate(CAPTIONS[:3], nfe=1, seed=0)
    assert images.shape == (3, 32, 32, 3) and images.dtype.name == "uint8"
    assert (images == gen.generate(CAPTIONS[:3], nfe=1, seed=0)).all()
    # a plain diffusers pipeline loads the folder (the r embedding's weights are extra to it)
    import diffusers

    plain = diffusers.StableDiffusion3Pipeline.from_pretrained(str(folder))
    assert plain.transformer.config.num_layers == 2


@pytest.mark.parametrize("decay", [0.99, 1.0, 0.0], ids=["ema-adapter", "frozen-base", "online"])
def test_lora_trains_only_the_adapter_and_lowers_the_loss(batch, decay, tmp_path):
    pipe, x, cond, uncond = batch
    net = TransformerVelocity(tiny_sd3_pipeline(WORDS, seed=0).transformer, "sd3", time_input="half")
    add_lora(net, rank=8, alpha=8, ema=0.0 < decay < 1.0)
    frozen = {n: p.clone() for n, p in net.named_parameters() if "lora_" not in n}
    before = eval_losses(net, x, cond, uncond)
    module = fit(net, LoraTeacher(net, decay), batch, steps=20, lr=5e-3 if decay == 0.0 else 2e-3)
    after = eval_losses(net, x, cond, uncond)
    assert after[1] < 0.95 * before[1] and after[0] < 1.1 * before[0], (before, after)
    assert all(torch.equal(p, frozen[n]) for n, p in net.named_parameters() if n in frozen)
    # the generator: the EMA adapter's view of the net, else the trained adapter itself (the frozen-base
    # teacher, the adapter disabled, is not what the run made)
    assert (module.generator_net() is net) == (decay in (0.0, 1.0))
    if decay == 0.99:
        assert module.ema.current > 0.85
        meta = generator_meta("sd3", "half", pipe, 32, 8)
        folder = save_latent_generator(tmp_path / "gen", net, pipe, meta)
        gen = load_latent_generator(folder)
        with torch.no_grad():
            t = torch.full((len(x),), 0.7)
            assert torch.allclose(gen.net(x, t, t * 0, cond), net(x, t, t * 0, cond), atol=1e-6)


@pytest.mark.parametrize("family", ["qwen_image", "sana"])
def test_full_fine_tuning_of_the_other_families_lowers_the_loss(family):
    """Qwen-Image and SANA through the same module and objective: a few TwinFlow steps on a fixed batch lower
    the fixed-target (flow-matching) loss and keep the TwinFlow loss from rising, and move the r embedding."""
    from twinflow_core.adapters.tiny import latent_channels, tiny_transformer

    g = torch.Generator().manual_seed(5)
    b = 8
    # latents with structure (a per-row constant plus a smooth ramp), so that there is something to fit
    ramp = torch.linspace(-1, 1, 16).view(1, 1, 1, 16)
    x = torch.randn(b, latent_channels(family), 1, 1, generator=g) + ramp * torch.randn(b, 1, 1, 1, generator=g)
    x = x.expand(-1, -1, 16, -1).contiguous()
    cond = {
        "prompt_embeds": torch.randn(b, 8, 32, generator=g),
        "pooled": torch.randn(b, 32, generator=g),
        "mask": torch.ones(b, 8, dtype=torch.long),
    }
    null = {
        "prompt_embeds": torch.zeros(1, 8, 32),
        "pooled": torch.zeros(1, 32),
        "mask": torch.ones(1, 8, dtype=torch.long),
    }
    uncond = {k: v.expand(b, *v.shape[1:]) for k, v in null.items()}
    net = TransformerVelocity(tiny_transformer(family, seed=0), family)
    base_r = {k: v.clone() for k, v in net.r_embedding.state_dict().items()}
    before = eval_losses(net, x, cond, uncond)
    fit(net, None, (None, x, cond, uncond), steps=20, lr=1e-3)
    after = eval_losses(net, x, cond, uncond)
    assert after[1] < 0.95 * before[1] and after[0] < 1.1 * before[0], (before, after)
    assert any(not torch.equal(v, net.r_embedding.state_dict()[k]) for k, v in base_r.items())

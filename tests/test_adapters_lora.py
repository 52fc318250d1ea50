"""LoRA on a diffusers transformer: official t - r/2 time input, EMA adapter, frozen-base teacher, and an export
that a plain diffusers pipeline loads (a tiny StableDiffusion3Pipeline saved to disk, no network)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from tests.test_adapters import base_output, inputs, make  # noqa: E402
from twinflow_core.adapters.lora import (  # noqa: E402
    LORA_FILE,
    LoraTeacher,
    adapter,
    add_lora,
    export_lora,
    lora_parameters,
)
from twinflow_core.adapters.velocity import TransformerVelocity  # noqa: E402
from twinflow_core.errors import ConfigError  # noqa: E402

WORDS = ["a", "red", "blue", "circle", "square", "on", "left", "right"]


from support.threads import one_thread  # noqa: E402,F401  (autouse)


def lora_net(family="sd3", ema=False, rank=4):
    net = TransformerVelocity(make(family), family, time_input="half")
    add_lora(net, rank=rank, alpha=rank, ema=ema)
    return net


def nudge(params, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("family", ["sd3", "qwen_image", "sana"])
def test_lora_starts_as_the_base_at_t_minus_half_r_and_trains_only_the_adapter(family):
    net = lora_net(family)
    base = make(family)
    x, t, cond = inputs(family)
    r = t * 0.3
    with torch.no_grad():
        assert torch.equal(net(x, t, r, cond), base_output(base, family, x, t - r / 2, cond))
    nudge([p for n, p in net.named_parameters() if "lora_B" in n])  # a trained B makes A's gradient non-zero
    net(x, t, r, cond).square().mean().backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    lora = {n for n, p in net.named_parameters() if p in set(lora_parameters(net))}
    # no adapter sits where the model drops the output (the last MMDiT block's context queries and output)
    assert with_grad == lora and lora
    dead = set()
    assert all(n.endswith("default.weight") for n in lora)
    assert any("timestep_embedder" in n for n in lora)  # the time embedder's linears are adapted too
    assert all(p.grad.abs().sum() > 0 for n, p in net.named_parameters() if n in lora - dead)


def test_lora_needs_the_half_time_input():
    with pytest.raises(ConfigError, match="time_input='half'"):
        add_lora(TransformerVelocity(make("sd3"), "sd3"), rank=4)


def test_teacher_rules_ema_adapter_online_and_frozen_base():
    net = lora_net(ema=True)
    base = make("sd3")
    x, t, cond = inputs("sd3")
    r = t * 0.5
    nudge(lora_parameters(net))
    with torch.no_grad():
        online = net(x, t, r, cond)
        frozen = LoraTeacher(net, 1.0).teacher(net)(x, t, r, cond)
        assert torch.equal(frozen, base_output(base, "sd3", x, t - r / 2, cond))
        assert not torch.equal(frozen, online)
        assert LoraTeacher(net, 0.0).teacher(net) is net
        ema = LoraTeacher(net, 0.99)
        before = ema.teacher(net)(x, t, r, cond)  # the EMA adapter still holds the initial (no-op) weights
        assert torch.equal(before, frozen)
        ema.update(net)  # first update: decay 0, the EMA adapter becomes the online adapter
        assert torch.equal(ema.teacher(net)(x, t, r, cond), online)
        assert ema.current == pytest.approx(0.495)
        nudge(lora_parameters(net), seed=1)
        ema.update(net)
        mixed = ema.teacher(net)(x, t, r, cond)
        assert not torch.equal(mixed, online) and not torch.equal(mixed, net(x, t, r, cond))
        assert torch.equal(net(x, t, r, cond), net(x, t, r, cond))  # the teacher call left "default" active
    assert all(p.requires_grad for p in lora_parameters(net))
    state = ema.state_dict()
    other = lora_net(ema=True)
    nudge(lora_parameters(other), seed=1)
    LoraTeacher(other, 0.99).load_state_dict(state)
    with torch.no_grad(), adapter(other, "ema"):
        assert torch.equal(other(x, t, r, cond), mixed)


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    from twinflow_core.adapters.tiny import save_tiny_sd3_pipeline

    return save_tiny_sd3_pipeline(tmp_path_factory.mktemp("pipe") / "sd3", WORDS, image_size=32)


def test_exported_lora_loads_into_a_plain_diffusers_pipeline_and_changes_it(tiny_pipeline_dir, tmp_path):
    import diffusers

    from twinflow_core.adapters.velocity import load_velocity

    net = load_velocity(str(tiny_pipeline_dir), family="sd3", time_input="half", subfolder="transformer")
    add_lora(net, rank=4, alpha=4)
    nudge([p for n, p in net.named_parameters() if "lora_B" in n])
    folder = export_lora(net, tmp_path / "lora")
    assert (folder / LORA_FILE).is_file() and (folder / LORA_FILE).stat().st_size < 1 << 20

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(str(tiny_pipeline_dir))
    kwargs = dict(
        prompt="a red circle",
        num_inference_steps=1,
        guidance_scale=1.0,
        height=32,
        width=32,
        output_type="latent",
        max_sequence_length=8,
    )
    plain = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(folder))
    tuned = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert (tuned - plain).abs().max() > 1e-4
    # the loaded pipeline's transformer is our 1-step generator's net: at (t=1, r=0) the time input is t - r/2 = 1
    x, _, cond = inputs("sd3")
    one = torch.ones(len(x))
    with torch.no_grad():
        ours = net(x, one, one * 0, cond)
        theirs = pipe.transformer(
            hidden_states=x,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled"],
            timestep=one * 1000,
            return_dict=False,
        )[0]
    assert torch.allclose(ours, theirs, atol=1e-6)

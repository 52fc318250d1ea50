"""The diffusers adapter layer: each family's transformer as F(x, t, r, cond), on tiny random models (no network)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from twinflow_core.adapters.families import FAMILIES, get_family  # noqa: E402
from twinflow_core.adapters.tiny import latent_channels, tiny_transformer  # noqa: E402
from twinflow_core.adapters.velocity import TransformerVelocity, load_velocity  # noqa: E402
from twinflow_core.errors import ConfigError  # noqa: E402

CASES = [("sd3", False), ("sd3", True), ("qwen_image", False), ("sana", False)]
IDS = ["sd3", "sd35", "qwen_image", "sana"]


from support.threads import one_thread  # noqa: E402,F401  (autouse)


def make(family, sd35=False, seed=0):
    return tiny_transformer(family, seed=seed, sd35=sd35)


def inputs(family, b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, latent_channels(family), 16, 16, generator=g)
    mask = torch.ones(b, 8, dtype=torch.long)
    mask[0, 5:] = 0  # a padded prompt
    cond = {
        "prompt_embeds": torch.randn(b, 8, 32, generator=g),
        "pooled": torch.randn(b, 32, generator=g),
        "mask": mask,
    }
    t = torch.rand(b, generator=g) * 0.9 + 0.05
    return x, t, cond


def base_output(transformer, family, x, t, cond):
    fam = get_family(family)
    with torch.no_grad():
        return fam.unpack(transformer(**fam.call(transformer, x, t * fam.time_scale, cond))[0], x)


@pytest.mark.parametrize("family,sd35", CASES, ids=IDS)
def test_r_equal_t_is_the_base_model_bit_for_bit(family, sd35):
    base = make(family, sd35)
    net = TransformerVelocity(make(family, sd35), family)
    x, t, cond = inputs(family)
    with torch.no_grad():
        out = net(x, t, t, cond)
        assert torch.equal(out, base_output(base, family, x, t, cond))
        # and r != t does change the output: the r embedding is live
        assert (net(x, t, torch.zeros_like(t), cond) - out).abs().max() > 1e-6


@pytest.mark.parametrize("family,sd35", CASES, ids=IDS)
def test_negative_time_is_finite_and_differs(family, sd35):
    net = TransformerVelocity(make(family, sd35), family)
    x, t, cond = inputs(family)
    with torch.no_grad():
        fake, real = net(x, -t, -t, cond), net(x, t, t, cond)
    assert fake.isfinite().all()
    assert (fake - real).abs().max() > 1e-4  # the sign reaches the model


def test_official_inits_and_names():
    sd3 = TransformerVelocity(make("sd3"), "sd3")
    emb2 = sd3.transformer.time_text_embed_2
    lin = emb2.timestep_embedder.linear_1
    assert torch.count_nonzero(lin.bias) == 0 and 0.015 < float(lin.weight.detach().std()) < 0.025
    assert any(k.startswith("transformer.time_text_embed_2.") for k in sd3.state_dict())
    qwen = TransformerVelocity(make("qwen_image"), "qwen_image")
    for a, b in zip(qwen.transformer.time_text_embed.parameters(), qwen.transformer.time_text_embed_2.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # a copy, not shared storage
    sana = TransformerVelocity(make("sana"), "sana")
    assert hasattr(sana.transformer, "time_embed_2")


@pytest.mark.parametrize("family,sd35", CASES, ids=IDS)
def test_full_fine_tuning_gradients_reach_every_parameter(family, sd35):
    net = TransformerVelocity(make(family, sd35), family)
    x, t, cond = inputs(family)
    net(x, t, t * 0.3, cond).square().mean().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # MMDiT (SD3, Qwen-Image): the last block's text-stream output is dropped, so its text-side
    # projections never reach the loss
    allowed = {
        n
        for n in no_grad
        if family in ("sd3", "qwen_image") and ".transformer_blocks.1." in n and ("add" in n or "txt" in n)
    }
    assert set(no_grad) <= allowed, sorted(set(no_grad) - allowed)[:5]
    assert all(p.grad is not None for p in net.r_embedding.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, cond = inputs("sd3")
    grads = []
    for ckpt in (False, True):
        net = TransformerVelocity(make("sd3"), "sd3")
        if ckpt:
            net.transformer.enable_gradient_checkpointing()
        net.train()
        net(x, t, t * 0.5, cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.r_embedding.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    assert grads[1].abs().sum() > 0


@pytest.mark.parametrize("family,sd35", CASES, ids=IDS)
def test_save_reload_gives_identical_outputs(family, sd35, tmp_path):
    net = TransformerVelocity(make(family, sd35), family)
    with torch.no_grad():  # a trained r embedding, not its init, must come back
        for p in net.r_embedding.parameters():
            p.add_(0.01)
    net.save(tmp_path / "transformer")
    again = load_velocity(str(tmp_path / "transformer"))
    assert again.family.name == family and again.time_input == "gated"
    x, t, cond = inputs(family)
    with torch.no_grad():
        for r in (t, torch.zeros_like(t)):
            assert torch.equal(net(x, t, r, cond), again(x, t, r, cond))
        assert torch.equal(net(x, -t, -t, cond), again(x, -t, -t, cond))


def test_a_base_diffusers_folder_loads_with_an_initialised_r_embedding(tmp_path):
    base = make("sd3")
    base.save_pretrained(str(tmp_path / "base"))
    net = load_velocity(str(tmp_path / "base"), family="sd3")
    assert all(p.isfinite().all() for p in net.r_embedding.parameters())
    x, t, cond = inputs("sd3")
    with torch.no_grad():
        assert torch.equal(net(x, t, t, cond), base_output(base, "sd3", x, t, cond))


def test_ema_deep_copy_uses_its_own_r_embedding():
    net = TransformerVelocity(make("sd3"), "sd3")
    twin = copy.deepcopy(net)
    x, t, cond = inputs("sd3")
    with torch.no_grad():
        for p in twin.r_embedding.parameters():
            p.mul_(3.0)
        assert not torch.equal(net(x, t, t * 0, cond), twin(x, t, t * 0, cond))
        assert torch.equal(net(x, t, t, cond), twin(x, t, t, cond))


def test_half_time_input_feeds_t_minus_half_r():
    base = make("sd3")
    net = TransformerVelocity(make("sd3"), "sd3", time_input="half")
    assert net.r_embedding is None and not hasattr(net.transformer, "time_text_embed_2")
    x, t, cond = inputs("sd3")
    r = t * 0.4
    with torch.no_grad():
        assert torch.equal(net(x, t, r, cond), base_output(base, "sd3", x, t - r / 2, cond))


def test_bad_condition_and_family_are_one_line_errors():
    net = TransformerVelocity(make("sd3"), "sd3")
    x, t, cond = inputs("sd3")
    with pytest.raises(ConfigError, match="pooled"):
        net(x, t, t, {"prompt_embeds": cond["prompt_embeds"]})
    with pytest.raises(ConfigError, match="dict"):
        net(x, t, t, None)
    with pytest.raises(ConfigError, match="unknown model family 'flux'"):
        get_family("flux")
    assert set(FAMILIES) == {"sd3", "qwen_image", "sana"}


def test_reloading_reports_unused_weights_only_beyond_the_r_embedding(tmp_path, caplog):
    """diffusers reports the r embedding's weights as unused by the plain transformer class; load_velocity loads
    them itself, so that report is dropped, but a weight that belongs to neither is still reported."""
    import logging

    from safetensors.torch import load_file, save_file

    net = TransformerVelocity(make("sd3"), "sd3")
    net.save(tmp_path / "transformer")
    with caplog.at_level(logging.WARNING, logger="diffusers.models.modeling_utils"):
        load_velocity(str(tmp_path / "transformer"))
    assert not [r for r in caplog.records if "were not used" in r.getMessage()]
    weights = next((tmp_path / "transformer").glob("*.safetensors"))
    state = load_file(str(weights))
    save_file({**state, "stray.weight": torch.zeros(2)}, str(weights), metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffusers.models.modeling_utils"):
        load_velocity(str(tmp_path / "transformer"))
    assert [r for r in caplog.records if "were not used" in r.getMessage() and "stray.weight" in r.getMessage()]

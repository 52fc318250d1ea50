"""Network registry and the time embeddings every net shares."""

import pytest
import torch

from twinflow_core.errors import ConfigError
from twinflow_core.nets import available_nets, build_net
from twinflow_core.nets.embeddings import TimePairEmbedding, sinusoidal_embedding


def test_registry_builds_by_name_and_rejects_unknown():
    assert "mlp2d" in available_nets()
    assert build_net("mlp2d", hidden=8, depth=1)(torch.zeros(3, 2), torch.ones(3), torch.zeros(3)).shape == (3, 2)
    with pytest.raises(ConfigError, match="unknown net 'resnet'"):
        build_net("resnet")
    with pytest.raises(ConfigError, match="mlp2d"):
        build_net("mlp2d", widht=3)


def test_negative_time_embeds_differently():
    t = torch.tensor([0.3, 0.7, 1.0])
    assert not torch.allclose(sinusoidal_embedding(t, 32), sinusoidal_embedding(-t, 32))
    torch.manual_seed(0)
    emb = TimePairEmbedding(16)
    assert (emb(t, t) - emb(-t, -t)).abs().min(dim=1).values.max() > 0
    net = build_net("mlp2d", hidden=16, depth=2, time_dim=8)
    x = torch.randn(3, 2)
    assert not torch.allclose(net(x, t, t), net(x, -t, -t))


def test_gate_makes_r_irrelevant_at_r_equal_t():
    """emb_t(t) + emb_r(r) * (t - r): at r = t the r branch is switched off (a plain velocity model)."""
    torch.manual_seed(0)
    emb = TimePairEmbedding(16)
    t = torch.tensor([0.2, 0.9])
    base = emb(t, t)
    with torch.no_grad():
        for p in emb.emb_r.parameters():
            p.add_(torch.randn_like(p))
    assert torch.allclose(emb(t, t), base)
    assert not torch.allclose(emb(t, torch.zeros(2)), base)


def test_learned_time_sign_starts_the_twin_field_as_a_copy_of_the_real_one():
    """time_sign="learned": |t| into the sinusoids plus a zero-initialised vector for t < 0, so a base that never
    saw t < 0 has F(x, -t, -t) = F(x, t, t) (dv = 0) until that vector learns; drawn without RNG, so the rest of
    the net initialises exactly as with "signed"."""
    t = torch.tensor([0.2, 0.9, 1.0])
    torch.manual_seed(0)
    learned = TimePairEmbedding(16, time_sign="learned")
    torch.manual_seed(0)
    signed = TimePairEmbedding(16)
    assert torch.equal(learned(t, t), signed(t, t)) and torch.equal(learned(t, 0 * t), signed(t, 0 * t))
    assert torch.equal(learned(-t, -t), learned(t, t))
    assert not torch.allclose(signed(-t, -t), signed(t, t))
    with torch.no_grad():
        learned.negative.add_(1.0)
    assert torch.allclose(learned(-t, -t), learned(t, t) + 1.0) and torch.equal(learned(t, t), signed(t, t))
    with pytest.raises(ValueError, match="time_sign 'abs'"):
        TimePairEmbedding(16, time_sign="abs")
    torch.manual_seed(1)
    a = build_net(
        "unet",
        image_size=8,
        channels=[8, 8],
        attn_levels=[],
        heads=2,
        text_dim=8,
        text_layers=1,
        time_dim=16,
        time_sign="learned",
    )
    torch.manual_seed(1)
    b = build_net(
        "unet", image_size=8, channels=[8, 8], attn_levels=[], heads=2, text_dim=8, text_layers=1, time_dim=16
    )
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) - set(sb) == {"time.negative"} and all(torch.equal(sa[k], sb[k]) for k in sb)

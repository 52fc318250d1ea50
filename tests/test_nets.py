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

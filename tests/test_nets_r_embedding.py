"""The r-embedding re-initialisation of a base before TwinFlow fine-tuning (official SD3.5/SANA and Qwen-Image)."""

import pytest
import torch

from twinflow_core.nets import build_net
from twinflow_core.nets.embeddings import reinit_target_time_embedding


def small_unet():
    torch.manual_seed(0)
    return build_net(
        "unet",
        image_size=8,
        channels=[8, 8],
        attn_levels=[1],
        text_dim=8,
        text_layers=1,
        heads=2,
        time_dim=16,
        vocab_size=10,
        max_len=4,
    )


def test_normal_reinit_touches_only_the_r_embedding():
    net = small_unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(1)
    assert reinit_target_time_embedding(net, "normal") == 1
    after = net.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(k.startswith("time.emb_r.") for k in changed)
    weights = [v for k, v in after.items() if k.startswith("time.emb_r.") and k.endswith("weight")]
    assert all(abs(w.std().item() - 0.02) < 0.005 for w in weights)
    assert all(torch.all(v == 0) for k, v in after.items() if k.startswith("time.emb_r.") and k.endswith("bias"))


def test_copy_t_and_keep():
    net = small_unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    reinit_target_time_embedding(net, "keep")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    reinit_target_time_embedding(net, "copy_t")
    sd = net.state_dict()
    for k, v in sd.items():
        if k.startswith("time.emb_r."):
            assert torch.equal(v, sd[k.replace("emb_r", "emb_t")])
    # at r = t the gate is closed: the re-init does not change the base's velocity field
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    fresh = small_unet()
    with torch.no_grad():
        for p in fresh.out.parameters():
            p.normal_()  # a non-zero output layer, so that the comparison means something
        for p_net, p_fresh in zip(net.out.parameters(), fresh.out.parameters()):
            p_net.copy_(p_fresh)
        assert torch.allclose(net(x, t, t), fresh(x, t, t), atol=1e-6)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="is not one of"):
        reinit_target_time_embedding(small_unet(), "xavier")

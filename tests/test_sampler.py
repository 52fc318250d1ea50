"""The any-step sampler and Euler: official time grids, exact NFE counts, golden outputs."""

import pytest
import torch

from twinflow_core.errors import ConfigError
from twinflow_core.nets import build_net
from twinflow_core.sampler import euler, sample, time_grid


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.times = net, 0, []

    def forward(self, x, t, r, cond=None):
        self.calls += 1
        self.times.append((round(float(t[0]), 4), round(float(r[0]), 4)))
        return self.net(x, t, r, cond)


def tiny():
    torch.manual_seed(0)
    return Counting(build_net("mlp2d", hidden=16, depth=2, time_dim=8))


def test_official_few_step_time_grids():
    assert time_grid(1, (0.001, 0.0)).tolist() == pytest.approx([0.999, 0.0])
    assert time_grid(2, (0.001, 0.6)).tolist() == pytest.approx([0.999, 0.6, 0.0])
    assert time_grid(4, (0.001, 0.5)).tolist() == pytest.approx([0.999, 0.832667, 0.666333, 0.5, 0.0], abs=1e-6)


@pytest.mark.parametrize("nfe", [1, 2, 4, 7])
@pytest.mark.parametrize("style", ["few", "any", "mul"])
def test_sample_makes_exactly_nfe_calls(nfe, style):
    net = tiny()
    out = sample(net, torch.randn(5, 2), nfe=nfe, style=style)
    assert net.calls == nfe and out.shape == (5, 2)


def test_few_style_targets_zero_and_any_targets_next_time():
    net = tiny()
    sample(net, torch.randn(3, 2), nfe=2, style="few")
    assert net.times == [(0.999, 0.0), (0.6, 0.0)]
    net = tiny()
    sample(net, torch.randn(3, 2), nfe=2, style="any", gaps=(0.001, 0.6))
    assert net.times == [(0.999, 0.6), (0.6, 0.0)]
    net = tiny()
    sample(net, torch.randn(3, 2), nfe=2, style="mul", gaps=(0.001, 0.6))
    assert net.times == [(0.999, 0.999), (0.6, 0.6)]


def test_one_nfe_is_the_generator():
    net = tiny()
    z = torch.randn(4, 2)
    out = sample(net, z, nfe=1)
    t = torch.full((4,), 0.999)
    assert torch.allclose(out, z - 0.999 * net.net(z, t, torch.zeros(4)))


def test_euler_calls_and_guidance_cost():
    net = tiny()
    euler(net, torch.randn(3, 2), steps=50)
    assert net.calls == 50
    torch.manual_seed(0)
    cnet = Counting(build_net("mlp2d", hidden=16, depth=2, time_dim=8, num_classes=2))
    euler(
        cnet, torch.randn(3, 2), torch.zeros(3, dtype=torch.long), steps=10, cfg_scale=0.5, uncond=torch.full((3,), 2)
    )
    assert cnet.calls == 20
    with pytest.raises(ConfigError, match="uncond"):
        euler(cnet, torch.randn(3, 2), torch.zeros(3, dtype=torch.long), steps=2, cfg_scale=0.5)


def test_golden_samples():
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    got = {
        "few1": sample(tiny(), z, nfe=1).sum().item(),
        "few2": sample(tiny(), z, nfe=2, generator=torch.Generator().manual_seed(4)).sum().item(),
        "few4": sample(tiny(), z, nfe=4, generator=torch.Generator().manual_seed(4)).sum().item(),
        "any4": sample(tiny(), z, nfe=4, style="any").sum().item(),
        "euler50": euler(tiny(), z, steps=50).sum().item(),
    }
    assert got == pytest.approx(GOLDEN, rel=1e-4, abs=1e-5)


# fixed seeds, the tiny net above; sums of 16 samples
GOLDEN = {"few1": 9.256856, "few2": 0.276374, "few4": 3.393442, "any4": 9.265525, "euler50": 9.36556}


def test_bad_arguments():
    with pytest.raises(ConfigError, match="sampling style"):
        sample(tiny(), torch.randn(2, 2), style="ddim")
    with pytest.raises(ConfigError, match="nfe must be >= 1"):
        sample(tiny(), torch.randn(2, 2), nfe=0)

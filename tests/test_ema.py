"""The EMA teacher: official warm-up (decays 0, 0.495, 0.620, ...), direction of the update, limit cases, and
its place in a step (once per optimiser step, after the grad forward)."""

import copy

import pytest
import torch

from twinflow_core.ema import EMA
from twinflow_core.nets import build_net
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective
from twinflow_core.training.module import _StepEMA


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return build_net("mlp2d", hidden=8, depth=1, time_dim=8)


def flat(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def official_decays(emd, n):
    d, out = 0.0, []
    for _ in range(n):
        out.append(d)
        d += (1 - d) * (emd - d) * 0.5
    return out


def test_warmup_decays_and_each_update_is_a_convex_step_towards_the_online_weights():
    net = tiny_net()
    ema = EMA(net, 0.99)
    decays = official_decays(0.99, 5)
    assert decays[:3] == pytest.approx([0.0, 0.495, 0.6199875], abs=1e-9)
    for step, d in enumerate(decays):
        assert ema.current == pytest.approx(d)
        old = flat(ema.model)
        with torch.no_grad():  # the online weights move somewhere new every step
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(net)
        assert torch.allclose(flat(ema.model), d * old + (1 - d) * flat(net), atol=1e-6), step
    # with the online weights held still, the copy approaches them monotonically
    dist = [(flat(ema.model) - flat(net)).norm().item()]
    for _ in range(4):
        ema.update(net)
        dist.append((flat(ema.model) - flat(net)).norm().item())
    assert all(b < a for a, b in zip(dist, dist[1:]))


def test_limit_cases_online_and_frozen():
    net = tiny_net()
    off = EMA(net, 0.0)
    assert off.model is None and off.teacher(net) is net
    frozen = EMA(net, 1.0)
    before = flat(frozen.model)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    frozen.update(net)
    assert frozen.teacher(net) is frozen.model and torch.equal(flat(frozen.model), before)
    assert not any(p.requires_grad for p in frozen.model.parameters())


def test_state_dict_round_trip():
    net = tiny_net()
    ema = EMA(net, 0.9)
    ema.update(net)
    ema.update(tiny_net(1))
    again = EMA(tiny_net(2), 0.9)
    again.load_state_dict(copy.deepcopy(ema.state_dict()))
    assert again.current == ema.current and torch.equal(flat(again.model), flat(ema.model))


def test_the_objective_updates_the_ema_once_right_after_the_grad_forward():
    """After one call the EMA has made exactly one update; its first (d = 0) makes the copy equal the online
    weights, which the teacher calls of that same step then see."""
    net = tiny_net()
    ema = EMA(net, 0.99)
    with torch.no_grad():
        for p in ema.model.parameters():
            p.add_(5.0)  # a copy far from the online weights before the step
    seen = []
    ema.model.register_forward_hook(lambda m, a, out: seen.append(flat(m)))
    torch.manual_seed(0)
    TwinFlowObjective(ObjectiveConfig.preset("twinflow"))(net, torch.randn(8, 2), ema=ema)
    assert ema.current == pytest.approx(0.495)
    assert torch.equal(flat(ema.model), flat(net))
    assert seen and all(torch.equal(s, flat(net)) for s in seen)


def test_step_ema_updates_only_on_the_first_micro_batch():
    net = tiny_net()
    ema = EMA(net, 0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = flat(ema.model)
    _StepEMA(ema, active=False).update(net)
    assert torch.equal(flat(ema.model), before) and ema.current == 0.0
    _StepEMA(ema, active=True).update(net)
    assert torch.equal(flat(ema.model), flat(net)) and ema.current == pytest.approx(0.45)
    assert _StepEMA(ema, active=False).teacher(net) is ema.model

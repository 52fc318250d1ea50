"""The TwinFlow objective: golden numbers per loss term, settings, gradient path and guards."""

import math

import pytest
import torch

from twinflow_core.ema import EMA
from twinflow_core.errors import ConfigError
from twinflow_core.nets import build_net
from twinflow_core.objective import (
    ObjectiveConfig,
    TwinFlowObjective,
    partition,
    per_sample_loss,
    rcgm_target,
    time_weight,
)


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return build_net("mlp2d", hidden=16, depth=2, time_dim=8)


def run_objective(preset, seed=0, batch=8, **overrides):
    net = tiny_net(seed)
    torch.manual_seed(seed + 1)
    x = torch.randn(batch, 2)
    loss, stats = TwinFlowObjective(ObjectiveConfig.preset(preset, **overrides))(net, x)
    return loss, stats


# Golden numbers: fixed seeds, the tiny net above, batch 8 (two rows per bucket).
GOLDEN = {
    "twinflow_l2": {
        "loss/base": 2.354826,
        "loss/e2e": 0.787585,
        "loss/mul": 3.793526,
        "loss/any": 1.253443,
        "loss/adv": 3.58475,
        "loss/rectify": 9.7e-05,
        "dv/abs_mean": 0.00792,
        "loss": 2.354874,
    },
    "twinflow_robust": {
        "loss/base": 2.075228,
        "loss/e2e": 0.883584,
        "loss/mul": 3.812444,
        "loss/any": 1.744186,
        "loss/adv": 1.860697,
        "loss/rectify": 0.00974,
        "dv/abs_mean": 0.00792,
        "loss": 2.080098,
    },
    "rcgm_l2": {"loss/base": 1.891985, "loss/e2e": 0.737033, "loss/mul": 2.7482, "loss/any": 2.34009, "loss": 1.891985},
    "fm_l2": {"loss/base": 10.877456, "loss/mul": 10.877456, "loss": 10.877456},
}


def test_golden_loss_terms_twinflow_l2():
    _, stats = run_objective("twinflow", loss="l2")
    assert stats == pytest.approx(GOLDEN["twinflow_l2"], rel=2e-4, abs=2e-6)


def test_golden_loss_terms_twinflow_robust():
    _, stats = run_objective("twinflow", loss="robust")
    assert stats == pytest.approx(GOLDEN["twinflow_robust"], rel=2e-4, abs=2e-6)


def test_golden_loss_terms_rcgm_and_fm():
    assert run_objective("rcgm", loss="l2")[1] == pytest.approx(GOLDEN["rcgm_l2"], rel=2e-4, abs=2e-6)
    assert run_objective("fm", loss="l2")[1] == pytest.approx(GOLDEN["fm_l2"], rel=2e-4, abs=2e-6)


def test_flow_matching_setting_is_plain_flow_matching():
    """fm preset == w * mean ||F(x_t, t, t) - (z - x)||^2 with the same draws; w = tan(0.4 pi) + 1 (r = t),
    and exactly plain FM with time_weighting off."""
    net = tiny_net()
    x = torch.randn(16, 2)
    for weighting, factor in ((True, math.tan(0.4 * math.pi) + 1), (False, 1.0)):
        torch.manual_seed(7)
        loss, _ = TwinFlowObjective(ObjectiveConfig.preset("fm", loss="l2", time_weighting=weighting))(net, x)
        torch.manual_seed(7)  # replay the objective's draws: t ~ Beta(1,1) = U(0,1), two unused uniforms, then z
        t = torch.distributions.Beta(1.0, 1.0).sample((16,))
        torch.rand(16), torch.rand(16)
        z = torch.randn_like(x)
        x_t = t[:, None] * z + (1 - t[:, None]) * x
        plain = ((net(x_t, t, t) - (z - x)) ** 2).mean()
        assert loss.item() == pytest.approx(factor * plain.item(), rel=1e-5)


def test_gradient_flows_only_through_one_forward():
    for preset in ("twinflow", "rcgm", "fm"):
        net = tiny_net()
        ema = EMA(net, 0.99)
        calls = {"grad": 0, "nograd": 0}

        def hook(module, args, output):
            calls["grad" if output.requires_grad else "nograd"] += 1  # noqa: B023 - called within the iteration

        net.register_forward_hook(hook)
        ema.model.register_forward_hook(hook)
        objective = TwinFlowObjective(ObjectiveConfig.preset(preset, enhanced_ratio=0.0))
        loss, _ = objective(net, torch.randn(8, 2), ema=ema)
        loss.backward()
        assert calls["grad"] == 1, preset
        assert all(p.grad is not None for p in net.parameters())
        assert all(p.grad is None for p in ema.model.parameters())


def test_twinflow_makes_the_documented_extra_calls():
    """fake generation (1) + RCGM rollout (order 2) + dv (its fake and real branch as one forward) no-grad calls
    beside the one grad forward."""
    net = tiny_net()
    counter = {"n": 0}
    net.register_forward_hook(lambda *a: counter.__setitem__("n", counter["n"] + 1))
    TwinFlowObjective(ObjectiveConfig.preset("twinflow"))(net, torch.randn(8, 2))
    assert counter["n"] == 1 + 1 + 2 + 1


def test_rcgm_target_by_hand():
    """A constant teacher G makes the rollout displacement D = (t_m - r) * G, so the residual is closed-form."""
    G = torch.tensor([[0.3, -0.2]])
    teacher = lambda x, tc, tn, c: G.expand_as(x)  # noqa: E731
    F = torch.tensor([[0.5, 0.1], [0.5, 0.1], [0.2, 0.2]])
    v = torch.tensor([[0.4, 0.0], [0.4, 0.0], [0.1, 0.3]])
    t = torch.tensor([0.8, 0.3, 0.5])
    r = torch.tensor([0.0, 0.295, 0.5])  # a large gap, a gap below delta, and t == r
    out = rcgm_target(teacher, F, v, torch.zeros(3, 2), t, r, None, order=2, delta=0.01, clip=1.0)
    t_m = 0.79
    R0 = ((0.8 * F[0]) - t_m * G[0]) / 0.01 - v[0]
    assert torch.allclose(out[0], F[0] - R0.clamp(-1, 1))
    assert torch.allclose(out[1], F[1] - (F[1] - v[1]))
    assert torch.allclose(out[2], F[2] - (F[2] - v[2]))
    assert torch.isfinite(out).all()


def test_t_equal_r_gives_no_nan():
    net = tiny_net()
    cfg = ObjectiveConfig.preset("twinflow", probs={"e2e": 0, "mul": 1, "any": 0, "adv": 0}, near_ratio=0.0)
    loss, stats = TwinFlowObjective(cfg)(net, torch.randn(8, 2))
    assert math.isfinite(loss.item())


def test_batch_not_divisible_by_four_is_a_clear_error():
    with pytest.raises(ConfigError, match="batch size 6 is not divisible by 4"):
        TwinFlowObjective()(tiny_net(), torch.randn(6, 2))


def test_partition_quarters_and_presets():
    masks = partition(8, {"e2e": 1, "mul": 1, "any": 1, "adv": 1})
    assert [int(m.sum()) for m in masks.values()] == [2, 2, 2, 2]
    assert masks["e2e"][:2].all() and masks["adv"][-2:].all()
    fm = partition(8, ObjectiveConfig.preset("fm").probs)
    assert int(fm["mul"].sum()) == 8


def test_unknown_keys_and_values_are_config_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        ObjectiveConfig.from_dict({"lamda": 0.5})
    with pytest.raises(ConfigError, match="unknown bucket"):
        ObjectiveConfig.from_dict({"probs": {"e2e": 1, "adversarial": 1}})
    with pytest.raises(ConfigError, match="unknown objective preset"):
        ObjectiveConfig.preset("dmd")


def test_losses_and_time_weight():
    pred, target = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    assert per_sample_loss(pred, target, "l2").item() == pytest.approx(2.5)
    c = 1e-3
    assert per_sample_loss(pred, target, "robust").item() == pytest.approx(
        2.5 / math.sqrt(2.5 / (c**2 + 1e-8) + 1) / c, rel=1e-5
    )  # official eps
    w = time_weight(torch.tensor([1.0, 0.5, -0.5]), torch.tensor([0.0, 0.5, -0.5]))
    assert w.tolist() == pytest.approx([1.0, math.tan(0.4 * math.pi) + 1, math.tan(0.4 * math.pi) + 1])


def test_cfg_target_uses_the_unconditional_branch():
    torch.manual_seed(0)
    net = build_net("mlp2d", hidden=16, depth=2, time_dim=8, num_classes=3)
    x, cond = torch.randn(8, 2), torch.randint(0, 3, (8,))
    uncond = torch.full((8,), 3)
    cfg = dict(loss="l2")
    torch.manual_seed(1)
    plain, _ = TwinFlowObjective(ObjectiveConfig.preset("twinflow", **cfg))(net, x, cond, uncond)
    torch.manual_seed(1)
    boosted, _ = TwinFlowObjective(ObjectiveConfig.preset("twinflow", enhanced_ratio=0.8, **cfg))(net, x, cond, uncond)
    assert plain.item() != pytest.approx(boosted.item())


def test_ema_warmup_and_limits():
    net = tiny_net()
    ema = EMA(net, 0.99)
    seq = []
    for _ in range(3):
        seq.append(ema.current)
        ema.update(net)
    assert seq == pytest.approx([0.0, 0.495, 0.495 + 0.505 * 0.495 * 0.5])
    assert EMA(net, 0.0).teacher(net) is net
    frozen = EMA(net, 1.0)
    before = [p.clone() for p in frozen.model.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    frozen.update(net)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.model.parameters()))


def test_no_cuda_only_rng_calls_in_core():
    from pathlib import Path

    import twinflow_core

    root = Path(twinflow_core.__file__).parent
    offenders = [
        p for p in root.rglob("*.py") if "cuda.get_rng_state" in p.read_text() or "cuda.set_rng_state" in p.read_text()
    ]
    assert offenders == []


class _NoCaptionReuse(torch.nn.Module):
    """The same UNet without `encode_condition`: every call encodes its captions (the plain path). Not `.module`,
    so the objective does not unwrap it."""

    def __init__(self, net):
        super().__init__()
        self.inner = net

    def forward(self, *args):
        return self.inner(*args)


@pytest.mark.parametrize("ema_decay", [0.9, 0.0, 1.0])
def test_caption_encodings_reused_across_no_grad_calls_give_the_same_loss_and_gradients(ema_decay):
    """The UNet's captions are encoded once per network and step for the teacher's CFG + RCGM calls and for dv's two
    branches: the loss and every gradient equal the path that encodes at each call, with fewer caption rows encoded."""
    import copy

    torch.manual_seed(0)
    net = build_net(
        "unet",
        image_size=8,
        channels=[8, 16],
        attn_levels=[1],
        vocab_size=10,
        max_len=6,
        text_dim=16,
        text_layers=1,
        heads=2,
        time_dim=16,
        out_skip=True,
    )
    plain = _NoCaptionReuse(copy.deepcopy(net))
    torch.manual_seed(1)
    x, ids = torch.randn(16, 3, 8, 8), torch.randint(1, 10, (16, 6))
    null = torch.zeros_like(ids)
    objective = TwinFlowObjective(ObjectiveConfig.preset("twinflow", enhanced_ratio=0.5))
    results = []
    for model in (net, plain):
        calls = []
        ema = EMA(model, ema_decay)
        for m in [model] + ([ema.model] if ema.model is not None else []):
            encoder = m.text if hasattr(m, "text") else m.inner.text
            encoder.register_forward_hook(lambda _m, inputs, _out: calls.append(inputs[0].shape[0]))  # noqa: B023 - called within the iteration
        torch.manual_seed(2)
        loss, stats = objective(model, x, ids, uncond=null, ema=ema)
        loss.backward()
        results.append((loss.item(), stats, {n: p.grad.clone() for n, p in model.named_parameters()}, sum(calls)))
    (l_new, s_new, g_new, n_new), (l_old, s_old, g_old, n_old) = results
    assert l_new == pytest.approx(l_old, rel=1e-6) and s_new == pytest.approx(s_old, rel=1e-5, abs=1e-7)
    assert "loss/rectify" in s_new and "loss/adv" in s_new  # every branch ran
    for name, grad in g_new.items():
        old = g_old["inner." + name]
        assert torch.allclose(grad, old, rtol=1e-5, atol=1e-6 * max(old.abs().max().item(), 1e-12)), name
    assert n_new < n_old

"""Gradient direction of the TwinFlow objective, not only its value.

- L_rectify: with the velocity gap dv injected, its gradient on the e2e rows' output F is lambda * dl/dF of
  l(F, sg(F - dv)), i.e. a positive multiple of +dv: gradient descent moves F_fake by -dv and the 1-step sample
  x_fake = z - F_fake by +dv (paper §3; design doc 1.3). The Barron weight enters as a constant.
- L_adv: the grad forward's adv rows sit at negative time t = r = -s on the online model's own detached 1-step
  samples, with the plain target z - x_fake and weight 1.
- Every call but the single grad forward (fake generation, CFG teacher, RCGM rollout, dv) carries no gradient.
"""

import math

import pytest
import torch

import twinflow_core.objective as objective_module
from twinflow_core.ema import EMA
from twinflow_core.nets import build_net
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective, per_sample_loss

BATCH, CLASSES = 8, 3


def conditional_net(seed=0):
    torch.manual_seed(seed)
    return build_net("mlp2d", hidden=16, depth=2, time_dim=8, num_classes=CLASSES)


def batch(seed=1):
    torch.manual_seed(seed)
    return torch.randn(BATCH, 2), torch.randint(0, CLASSES, (BATCH,)), torch.full((BATCH,), CLASSES)


class GradForward:
    """Forward hook keeping the grad-carrying forward's inputs and output (with its .grad after backward)."""

    def __init__(self, net):
        self.inputs, self.output = None, None
        net.register_forward_hook(self)

    def __call__(self, module, args, output):
        if output.requires_grad:
            assert self.output is None, "more than one grad-carrying forward"
            output.retain_grad()
            self.inputs, self.output = args, output


def rectify_grad(monkeypatch, dv, loss, cof=0.5):
    """Gradient on F of the whole loss with velocity_gap returning `dv` (None: the real dv)."""
    if dv is not None:
        monkeypatch.setattr(objective_module, "velocity_gap", lambda net, x_fake, cond, clip, draws=None: dv.clone())
    net = conditional_net()
    rec = GradForward(net)
    x, c, e = batch()
    torch.manual_seed(7)
    cfg = ObjectiveConfig.preset("twinflow", loss=loss, dist_match_cof=cof, enhanced_ratio=0.5)
    total, stats = TwinFlowObjective(cfg)(net, x, c, e)
    total.backward()
    monkeypatch.undo()
    return rec.output.grad.clone(), rec.output.detach(), stats


@pytest.mark.parametrize("loss", ["l2", "robust"])
def test_rectify_pushes_the_generator_along_the_velocity_gap(monkeypatch, loss):
    e2e = slice(0, BATCH // 4)
    n, dim = BATCH // 4, 2
    dv = torch.tensor([[0.3, -0.2], [-0.05, 0.4]])
    cof = 0.5
    with_gap, F, stats = rectify_grad(monkeypatch, dv, loss, cof)
    without, F0, _ = rectify_grad(monkeypatch, torch.zeros_like(dv), loss, cof)
    assert torch.equal(F, F0)  # same draws, same forward
    g = with_gap - without  # the rectify term's own gradient on F
    assert torch.all(g[e2e.stop :] == 0), "rectify must touch only the e2e rows"
    # closed form: l = mse (l2) or mse * sg(w) / c (Barron alpha = 1), mse = |F - sg(F - dv)|^2 / dim = |dv|^2 / dim
    mse = dv.pow(2).mean(dim=1, keepdim=True)
    scale = torch.ones_like(mse) if loss == "l2" else (mse / (1e-6 + 1e-8) + 1).pow(-0.5) / 1e-3
    expected = cof * 2 * dv / (dim * n) * scale
    assert torch.allclose(g[e2e], expected, rtol=1e-4, atol=1e-8)
    # a step of gradient descent moves F_fake by -dv and x_fake = z - F_fake by +dv (row by row, positive factor)
    cos = torch.nn.functional.cosine_similarity(-g[e2e], -dv, dim=1)
    assert torch.all(cos > 0.9999)
    assert stats["loss/rectify"] == pytest.approx(
        per_sample_loss(dv, torch.zeros_like(dv), loss).mean().item(), rel=1e-5
    )


def test_rectify_uses_the_velocity_gap_fake_minus_real():
    """dv = clip(F(y, -s, -s) - F(y, s, s)): the fake (twin) branch minus the real branch, from the online net."""
    calls = []

    def net(x, t, r, cond):
        calls.append(t.clone())
        # a field whose value tells the branch: +1 on the twin branch (t < 0), -1 on the real branch
        return torch.where(t[:, None] < 0, torch.ones_like(x), -torch.ones_like(x)) * 0.25

    dv = objective_module.velocity_gap(net, torch.zeros(3, 2), None, clip=1.0)
    assert torch.allclose(dv, torch.full((3, 2), 0.5))
    assert dv.requires_grad is False


def test_barron_weight_is_a_constant_in_the_gradient():
    pred = torch.tensor([[0.3, -0.1], [2.0, 1.0]], requires_grad=True)
    target = torch.zeros_like(pred)
    per_sample_loss(pred, target, "robust").sum().backward()
    mse = pred.detach().pow(2).mean(dim=1, keepdim=True)
    w = (mse / (1e-6 + 1e-8) + 1).pow(-0.5)
    assert torch.allclose(pred.grad, w / 1e-3 * 2 * pred.detach() / 2, rtol=1e-5)
    # the same loss with a live weight has another gradient, so the check above can tell them apart
    live = pred.detach().clone().requires_grad_(True)
    m = live.pow(2).mean(dim=1)
    (m * (m / (1e-6 + 1e-8) + 1).pow(-0.5) / 1e-3).sum().backward()
    assert not torch.allclose(pred.grad, live.grad, rtol=1e-2)


@pytest.mark.parametrize("emd", [0.99, 0.0, 1.0])
def test_adv_rows_train_on_detached_own_samples_at_negative_time(emd):
    net = conditional_net()
    ema = EMA(net, emd)
    rec = GradForward(net)
    generated = []
    net.register_forward_hook(
        lambda m, a, out: (
            generated.append((a, out))
            if (not out.requires_grad and bool((a[1] == 1).all()) and bool((a[2] == 0).all()))
            else None
        )
    )
    x, c, e = batch()
    torch.manual_seed(3)
    cfg = ObjectiveConfig.preset("twinflow", loss="l2", enhanced_ratio=0.8)
    loss, stats = TwinFlowObjective(cfg)(net, x, c, e, ema=ema)
    x_t, t, r, cond = rec.inputs
    adv = slice(3 * BATCH // 4, BATCH)
    assert not x_t.requires_grad and not t.requires_grad
    assert torch.all(t[adv] < 0) and torch.equal(t[adv], r[adv]), "adv rows: t = r = -s"
    assert torch.all(t[: 3 * BATCH // 4] >= 0)
    # the fake samples: x_fake = z' - F(z', 1, 0) from the online net before the grad forward, on the adv rows
    assert len(generated) == 1
    (z_gen, _, _, c_gen), F_gen = generated[0]
    assert torch.equal(c_gen, c[adv])
    x_fake = z_gen - F_gen
    s = -t[adv][:, None]
    z = (x_t[adv] - (1 - s) * x_fake) / s  # the noise that put x_fake at time s
    F_adv = rec.output.detach()[adv]
    assert stats["loss/adv"] == pytest.approx(((F_adv - (z - x_fake)) ** 2).mean().item(), rel=1e-5)
    assert x_fake.requires_grad is False


@pytest.mark.parametrize("preset", ["twinflow", "rcgm", "fm"])
@pytest.mark.parametrize("emd", [0.99, 0.0, 1.0])
def test_only_the_grad_forward_carries_gradient(preset, emd):
    net = conditional_net()
    ema = EMA(net, emd)
    outputs = {"grad": 0, "nograd": 0}

    def hook(module, args, out):
        outputs["grad" if out.requires_grad else "nograd"] += 1
        assert not any(a.requires_grad for a in args if isinstance(a, torch.Tensor)) or out.requires_grad

    net.register_forward_hook(hook)
    if ema.model is not None:
        ema.model.register_forward_hook(hook)
    x, c, e = batch()
    over = {} if preset == "fm" else {"enhanced_ratio": 0.8}
    loss, _ = TwinFlowObjective(ObjectiveConfig.preset(preset, **over))(net, x, c, e, ema=ema)
    loss.backward()
    assert outputs["grad"] == 1
    assert outputs["nograd"] >= (0 if preset == "fm" else 3)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    if ema.model is not None:
        assert all(p.grad is None and not p.requires_grad for p in ema.model.parameters())
    assert math.isfinite(loss.item())

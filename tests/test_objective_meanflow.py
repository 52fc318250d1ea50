"""MeanFlow against an independent transcription of the published loss (Geng et al. 2025, arXiv 2505.13447).

The reference below is written from the paper, not from twinflow_core/objectives/meanflow.py: on a copy of the
network in float64 (a smooth test network of the objective's signature: the project's nets embed time in
float32 at frequencies up to 1000, too sharp for finite differences), with the total derivative
d/dt u(z_t, r, t) = v du/dz + du/dt taken by central finite differences along the path (z_t + h v, t + h)
instead of torch.func.jvp, the target
u_tgt = v~ - (t - r) du/dt with v~ = omega v + (1 - omega) u(z_t, t, t | null), and the loss
mean_i sg(w_i) ||u_i - sg(u_tgt_i)||^2, w_i = 1 / (||u_i - u_tgt_i||^2 + c)^p. The network's signature is the
project's F(x, t, r, cond) = their u(z, r, t). The draws (t, r, noise) follow the objective's order of
random calls; the (t, r) distribution itself is checked separately.
"""

import copy

import pytest
import torch

from twinflow_core import objectives
from twinflow_core.nets import build_net
from twinflow_core.sampler import sample

BATCH, CLASSES = 8, 3


class SmoothNet(torch.nn.Module):
    """F(x, t, r, cond) on the plane, smooth in every input and usable in float64."""

    def __init__(self, hidden=32):
        super().__init__()
        self.label = torch.nn.Embedding(CLASSES + 1, 4)  # index CLASSES: the null label
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(2 + 3 + 4, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, 2),
        )

    def forward(self, x, t, r, cond=None):
        t, r = t.to(x.dtype)[:, None], r.to(x.dtype)[:, None]
        return self.mlp(torch.cat([x, t, r, (t - r) * t, self.label(cond)], dim=1))


def net_and_batch(seed=0):
    torch.manual_seed(seed)
    net = SmoothNet()
    x = torch.randn(BATCH, 2)
    return net, x, torch.randint(0, CLASSES, (BATCH,)), torch.full((BATCH,), CLASSES)


def reference(net, x, cond, uncond, seed, mu=-0.4, sigma=1.0, ratio=0.25, p=1.0, c=1e-3, w=0.0, h=1e-5):
    """The published MeanFlow loss and its parameter gradients, transcribed independently (float64)."""
    ref = copy.deepcopy(net).double()
    x = x.double()
    torch.manual_seed(seed)
    a, b = torch.sigmoid(torch.randn(2, BATCH) * sigma + mu).double()
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    n_neq = round(ratio * BATCH)
    r = torch.where(torch.arange(BATCH) < n_neq, r, t)  # the other rows: r = t
    eps = torch.randn(x.shape).double()
    z_t = (1 - t)[:, None] * x + t[:, None] * eps  # their path, t = 1 noise
    v = eps - x

    def u(z, r_, t_, y):  # their u(z, r, t) is the project's F(z, t, r, cond)
        return ref(z, t_, r_, y)

    with torch.no_grad():
        if w > 0:
            omega = 1 + w
            v = omega * v + (1 - omega) * u(z_t, t, t, uncond)
        dudt = (u(z_t + h * v, r, t + h, cond) - u(z_t - h * v, r, t - h, cond)) / (2 * h)
        u_tgt = v - (t - r)[:, None] * dudt
    u_pred = u(z_t, r, t, cond)
    sq = ((u_pred - u_tgt) ** 2).sum(dim=1)
    weight = 1.0 / (sq.detach() + c) ** p
    loss = (weight * sq).mean()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    return loss.item(), [g.float() for g in grads]


def objective_loss(net, x, cond, uncond, seed, **overrides):
    obj = objectives.build_objective(objectives.build_config("meanflow", **overrides))
    net.zero_grad()
    torch.manual_seed(seed)
    loss, stats = obj(net, x, cond, uncond=uncond)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in net.parameters()], stats


CASES = {
    "published": {},  # p = 1, c = 1e-3, lognorm(-0.4, 1), 25 % r != t
    "l2": {"adaptive_p": 0.0},  # the loss value itself depends on every term of the target
    "guided-all-rows": {"enhanced_ratio": 0.5, "ratio_r_neq_t": 1.0, "adaptive_p": 0.5},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_meanflow_value_and_gradient_match_the_published_formula(case):
    over = CASES[case]
    net, x, cond, uncond = net_and_batch()
    value, grads, stats = objective_loss(net, x, cond, uncond, seed=11, **over)
    kw = {
        "ratio": over.get("ratio_r_neq_t", 0.25),
        "p": over.get("adaptive_p", 1.0),
        "w": over.get("enhanced_ratio", 0.0),
    }
    ref_value, ref_grads = reference(net, x, cond, uncond, seed=11, **kw)
    assert value == pytest.approx(ref_value, rel=1e-4, abs=1e-6)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=2e-3, atol=2e-5)
    assert stats["loss"] == pytest.approx(value)


def test_meanflow_target_differs_from_flow_matching_only_through_the_jvp_term():
    """With r = t on every row the (t - r) term vanishes: the l2 loss is the plain flow-matching regression."""
    net, x, cond, uncond = net_and_batch(seed=3)
    value, _, _ = objective_loss(net, x, cond, None, seed=5, ratio_r_neq_t=0.0, adaptive_p=0.0)
    torch.manual_seed(5)
    a, b = torch.sigmoid(torch.randn(2, BATCH) * 1.0 - 0.4)
    t = torch.maximum(a, b)
    eps = torch.randn(x.shape)
    x_t = t[:, None] * eps + (1 - t[:, None]) * x
    with torch.no_grad():
        fm = ((net(x_t, t, t, cond) - (eps - x)) ** 2).sum(1).mean().item()
    assert value == pytest.approx(fm, rel=1e-5)


def test_meanflow_time_sampling_is_the_published_one():
    from twinflow_core.objectives.meanflow import MeanFlowConfig, sample_t_r

    torch.manual_seed(0)
    t, r = sample_t_r(40_000, MeanFlowConfig())
    assert bool((r <= t).all()) and bool((t > 0).all()) and bool((t < 1).all())
    assert (t != r).float().mean().item() == pytest.approx(0.25, abs=1e-3)
    # logit-normal(-0.4, 1): the logit of both draws pooled has mean -0.4 and std 1
    keep = 10_000
    pooled = torch.logit(torch.cat([t[:keep], r[:keep]]).double())
    assert pooled.mean().item() == pytest.approx(-0.4, abs=0.03)
    assert pooled.std().item() == pytest.approx(1.0, abs=0.03)


def test_meanflow_one_nfe_sampler_is_z_minus_u_at_r0_t1():
    """Their z_0 = z_1 - (1 - 0) u(z_1, 0, 1) through the project's sampler with the registered settings, and
    the 2-NFE chain z_0.5 = z_1 - 0.5 u(z_1, 0.5, 1), z_0 = z_0.5 - 0.5 u(z_0.5, 0, 0.5)."""
    net, _, cond, _ = net_and_batch()
    kwargs = objectives.get("meanflow").sampler
    z = torch.randn(BATCH, 2)
    one = torch.ones(BATCH)
    with torch.no_grad():
        torch.testing.assert_close(sample(net, z, cond, nfe=1, **kwargs), z - net(z, one, 0 * one, cond))
        half = z - 0.5 * net(z, one, 0.5 * one, cond)
        torch.testing.assert_close(
            sample(net, z, cond, nfe=2, **kwargs), half - 0.5 * net(half, 0.5 * one, 0 * one, cond)
        )


def test_meanflow_jvp_runs_on_the_in_house_unet_and_matches_finite_differences():
    """The UNet (channels-last activations, fused attention) under torch.func.jvp: the objective switches it to
    the layout and kernel that forward-mode AD supports, and back."""
    from twinflow_core.objectives.meanflow import forward_mode_layout

    torch.manual_seed(0)
    net = build_net(
        "unet",
        image_size=8,
        patch=1,
        channels=[8, 8],
        res_blocks=1,
        attn_levels=[1],
        text_dim=8,
        text_layers=1,
        heads=2,
        time_dim=16,
        vocab_size=12,
        max_len=6,
    )
    torch.nn.init.normal_(net.out.weight, std=0.05)  # a zero-initialised head would make every derivative 0
    x, ids = torch.randn(2, 3, 8, 8), torch.randint(1, 12, (2, 6))
    t, r, v = torch.tensor([0.7, 0.4]), torch.tensor([0.2, 0.4]), torch.randn(2, 3, 8, 8)
    with forward_mode_layout(net):
        _, d = torch.func.jvp(lambda a, b: net(a, b, r, ids), (x, t), (v, torch.ones_like(t)))
    assert net.channels_last is True
    h = 1e-3
    with torch.no_grad():
        fd = (net(x + h * v, t + h, r, ids) - net(x - h * v, t - h, r, ids)) / (2 * h)
    torch.testing.assert_close(d, fd, rtol=2e-2, atol=2e-3)
    obj = objectives.build_objective(objectives.build_config("meanflow", enhanced_ratio=0.5))
    loss, _ = obj(net, x, ids, uncond=torch.zeros_like(ids))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_meanflow_micro_batches_are_slices_of_the_whole_batch():
    """The training module passes rows=(first row, global batch): a slice that is the whole batch is the plain
    call (bitwise the same loss and gradients); two micro-batches of half the batch, each drawn after the step's
    seed as the module draws it, give the whole batch's loss as the mean of theirs and its gradient as the mean
    of theirs (up to float summation order), so a step does not depend on the split."""
    net, x, cond, uncond = net_and_batch(seed=2)
    obj = objectives.build_objective(objectives.build_config("meanflow", enhanced_ratio=0.5))

    def run(rows, lo=0, hi=BATCH):
        net.zero_grad()
        torch.manual_seed(4)
        loss, _ = obj(net, x[lo:hi], cond[lo:hi], uncond=uncond[lo:hi], rows=rows)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    plain, whole = run(None), run((0, BATCH))
    assert plain[0] == whole[0]
    for a, b in zip(plain[1], whole[1]):
        assert torch.equal(a, b)
    half = BATCH // 2
    first, second = run((0, BATCH), 0, half), run((half, BATCH), half, BATCH)
    torch.testing.assert_close((first[0] + second[0]) / 2, whole[0], rtol=1e-5, atol=1e-7)
    for a, b, w in zip(first[1], second[1], whole[1]):
        torch.testing.assert_close((a + b) / 2, w, rtol=1e-4, atol=1e-6)
    # a wrong slice is not the whole batch's: the check above can fail
    shifted = run((half, BATCH), 0, half)
    assert not torch.allclose((shifted[0] + second[0]) / 2, whole[0])


@pytest.mark.slow  # two stage subprocesses (~30-60 s on a 2-core box)
def test_the_train_stage_fine_tunes_with_objective_meanflow(tmp_path):
    """`objective=meanflow` in params.yaml: the pretrain and train stages as DVC runs them, the train stage
    fine-tuning the fresh base with MeanFlow and exporting a generator whose metadata names the objective."""
    import json

    from support.training import make_dataset, run_stage, smoke_params

    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data, ["objective=meanflow"])
    for stage in ("pretrain", "train"):
        proc = run_stage(stage, params)
        assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "twinflow" / "model.json").read_text())
    assert meta["extra"]["objective"]["method"] == "meanflow", meta["extra"]["objective"]

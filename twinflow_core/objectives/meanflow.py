"""MeanFlow (Geng, Deng, Bai, Kolter, He: "Mean Flows for One-step Generative Modeling", arXiv 2505.13447).

The network learns the average velocity u(z_t, r, t) = 1/(t - r) * integral_r^t v(z_tau, tau) dtau through the
MeanFlow identity (their Eq. 6)

    u(z_t, r, t) = v(z_t, t) - (t - r) * d/dt u(z_t, r, t),   d/dt u = v * du/dz + du/dt   (dr/dt = 0),

with the regression target u_tgt = sg(v - (t - r) * JVP), the total derivative computed as one Jacobian-vector
product of the network along the tangent (dz, dr, dt) = (v, 0, 1) (their Algorithm 1, `torch.func.jvp` here), the
loss ||u_theta - sg(u_tgt)||^2 per sample with the adaptive weight sg(1 / (||.||^2 + c)^p) (their Eq. 22).

Convention map, MeanFlow -> this project (twinflow_core/objective.py, twinflow_method.md §1.1):
- path: theirs z_t = (1 - t) x + t eps, t = 1 noise, t = 0 data, v = eps - x; the project's x_t = t z + (1 - t) x,
  v = z - x: the same path, the same time direction, the same velocity;
- network: their u_theta(z_t, r, t) is the project's F(x_t, t, r, cond): the SAME function with t and r in the
  other order, and the same displacement z_r = z_t - (t - r) u (the project's x_r ~ x_t - (t - r) F);
- so the JVP tangent, in the project's argument order (x_t, t, r), is (v, 1, 0);
- time is never negative here: MeanFlow has no twin (t < 0) branch, so 0 <= r <= t <= 1 on every row;
- 1-NFE sampler: theirs z_0 = z_1 - (1 - 0) u(z_1, 0, 1) is the project's generator x = z - F(z, 1, 0)
  (`objective.one_step`, and `sampler.sample(..., nfe=1)`, which evaluates it at t = 0.999 like every method);
  k NFE: the deterministic chain z_r = z_t - (t - r) u(z_t, r, t) over k equal intervals of [0, 1], the sampler's
  "any" style with gaps (0, 0) (their multi-step sampling).

(t, r) sampling as published: two draws from the logit-normal lognorm(mu, sigma) (their best: mu = -0.4,
sigma = 1.0), t = the larger, r = the smaller; a fraction `ratio_r_neq_t` of the rows (their best: 25 %) keeps
r != t, the others set r = t (plain flow matching: the (t - r) term vanishes). Here the first
round(ratio * batch) rows of a batch are the r != t rows (rows are i.i.d.; a contiguous block as the TwinFlow buckets).

Guidance (their Eq. 13-21, with kappa = 0): with `enhanced_ratio` = w > 0 and an unconditional branch, the field the
network regresses is v~ = omega v + (1 - omega) u(z_t, t, t | null), omega = 1 + w, the unconditional velocity from
the online network without gradient; v~ also is the JVP's tangent. w = 0: the unguided objective.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from twinflow_core.errors import ConfigError
from twinflow_core.objective import config_from_dict, randn_rows, unwrap
from twinflow_core.objectives import Method, register


@dataclass
class MeanFlowConfig:
    method: str = "meanflow"  # recorded in exports; not a setting
    time_mu: float = -0.4  # logit-normal mean of the (t, r) draws
    time_sigma: float = 1.0  # logit-normal standard deviation
    ratio_r_neq_t: float = 0.25  # fraction of rows with r != t
    adaptive_p: float = 1.0  # p of the adaptive weight 1 / (||delta||^2 + c)^p; 0: plain squared L2
    adaptive_c: float = 1e-3  # c of the adaptive weight
    # w of the guided field (omega = 1 + w), the name TwinFlow uses for the guidance its target bakes in (the
    # benchmarks read it to pick the guided reference); needs an unconditional branch
    enhanced_ratio: float = 0.0

    @classmethod
    def from_dict(cls, values: dict) -> MeanFlowConfig:
        return config_from_dict(cls, values, "objective (meanflow)")

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.method != "meanflow":
            raise ConfigError(f"objective (meanflow): method is {self.method!r}, not 'meanflow'")
        if not 0.0 <= self.ratio_r_neq_t <= 1.0:
            raise ConfigError(f"objective.ratio_r_neq_t must be in [0, 1], got {self.ratio_r_neq_t}")
        if self.time_sigma <= 0 or self.adaptive_c <= 0 or self.adaptive_p < 0 or self.enhanced_ratio < 0:
            raise ConfigError(
                "objective (meanflow): need time_sigma > 0, adaptive_c > 0, adaptive_p >= 0, "
                f"enhanced_ratio >= 0; got {self.time_sigma}, {self.adaptive_c}, {self.adaptive_p}, "
                f"{self.enhanced_ratio}"
            )


def sample_t_r(batch: int, cfg: MeanFlowConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) per row: two logit-normal draws, t the larger; rows past round(ratio * batch) get r = t."""
    draws = torch.sigmoid(torch.randn(2, batch, device=device) * cfg.time_sigma + cfg.time_mu)
    t, r = draws.max(dim=0).values, draws.min(dim=0).values
    keep = int(round(cfg.ratio_r_neq_t * batch))
    r = torch.cat([r[:keep], t[keep:]])
    return t, r


def adaptive_loss(u: torch.Tensor, target: torch.Tensor, p: float, c: float) -> torch.Tensor:
    """Per sample sg(w) * ||u - target||^2, w = 1 / (||u - target||^2 + c)^p (their Eq. 22; the squared norm
    summed over the sample's dimensions)."""
    sq = (u.float() - target.float()).pow(2).flatten(1).sum(dim=1)
    if p == 0.0:
        return sq
    return sq / (sq.detach() + c).pow(p)


@contextmanager
def forward_mode_layout(net: nn.Module):
    """What forward-mode AD of a net needs from PyTorch's kernels: the math attention kernel (the fused CPU/GPU
    kernels have no forward-mode rule), and the contiguous layout for nets with a `channels_last` switch (the
    in-house UNet; the forward-mode rule of group_norm fails on channels-last activations). Same values up to
    float summation order."""

    mods = [m for m in net.modules() if hasattr(m, "channels_last")]
    saved = [m.channels_last for m in mods]
    for m in mods:
        m.channels_last = False
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        for m, s in zip(mods, saved):
            m.channels_last = s


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


class MeanFlowObjective:
    """`loss, stats = objective(net, x, cond, uncond=..., ema=...)`: the MeanFlow loss of one batch.

    One JVP of the network carries the gradient (its primal output is u_theta; its tangent, detached, the total
    derivative). Under a DDP-style wrapper the grad forward goes through the wrapper and the JVP runs on the
    unwrapped module without gradient (functorch transforms do not pass through DDP's hooks): same values.
    The EMA (export and teacher of nothing here) is updated right after the grad forward, as in TwinFlow.
    """

    def __init__(self, cfg: MeanFlowConfig | None = None):
        self.cfg = cfg or MeanFlowConfig()
        self.cfg.validate()

    def __call__(self, net: nn.Module, x: torch.Tensor, cond=None, uncond=None, ema=None, rows=None):
        # rows = (first row, global batch): the training module's micro-batch slice of a global batch. Every draw
        # is made at the global batch's size, in the order the whole batch in one piece draws them, and this
        # slice's rows are cut out of it, so the step does not depend on how the batch is split over micro-
        # batches and processes (the slices' mean losses average to the batch's: equal slices).
        cfg = self.cfg
        inner = unwrap(net)
        n = x.shape[0]
        lo, total = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
        with torch.no_grad():
            t, r = sample_t_r(total, cfg, x.device)
            e = torch.randn_like(x) if total == n else randn_rows(total, x)
            t, r, e = t[lo : lo + n], r[lo : lo + n], e[lo : lo + n]
            x_t = _bcast(t, x) * e + (1 - _bcast(t, x)) * x
            v = e - x
            if cfg.enhanced_ratio > 0 and uncond is not None:
                omega = 1.0 + cfg.enhanced_ratio
                v = omega * v + (1.0 - omega) * inner(x_t, t, t, uncond).to(v.dtype)
        tangents = (v, torch.ones_like(t), torch.zeros_like(r))  # d/dt along the path: (dz, dt, dr) = (v, 1, 0)
        with forward_mode_layout(inner):
            if net is inner:
                u, dudt = torch.func.jvp(lambda a, b, c: net(a, b, c, cond), (x_t, t, r), tangents)
            else:
                u = net(x_t, t, r, cond)
                with torch.no_grad():
                    _, dudt = torch.func.jvp(lambda a, b, c: inner(a, b, c, cond), (x_t, t, r), tangents)
        if ema is not None:
            ema.update(inner)
        target = (v - _bcast(t - r, v) * dudt).detach()  # stop-gradient on the whole target
        per_sample = adaptive_loss(u, target, cfg.adaptive_p, cfg.adaptive_c)
        loss = per_sample.mean()
        # the r != t rows are the global batch's first round(ratio * total): this slice's share of them
        keep = min(max(int(round(cfg.ratio_r_neq_t * total)) - lo, 0), n)
        stats = {
            "loss": loss.item(),
            "loss/base": loss.item(),
            "mse": (u.detach().float() - target.float()).pow(2).mean().item(),
        }
        if 0 < keep < n:
            stats["loss/r_neq_t"] = per_sample[:keep].mean().item()
            stats["loss/r_eq_t"] = per_sample[keep:].mean().item()
        return loss, stats


register(
    Method(
        "meanflow",
        MeanFlowConfig,
        MeanFlowObjective,
        {},
        sampler={"style": "any", "gaps": (0.0, 0.0)},
        toy={},
        summary="MeanFlow: average velocity through the MeanFlow identity, JVP target, adaptive weight",
    )
)

"""The any-step sampler (UCGM, the official `sampling_loop`) and plain Euler for the flow-matching reference.

Both are pure functions of (net, noise, condition, schedule) and make exactly the advertised number of network
evaluations: `sample(..., nfe=K)` calls the net K times; `euler(..., steps=K)` K times, 2K with guidance.

Path convention: x_t = t*z + (1-t)*x, so sampling runs t from ~1 down to 0. From one output F at time t:
x_hat = x - t*F (predicted data), z_hat = x + (1-t)*F (predicted noise).
"""

from __future__ import annotations

import torch

from twinflow_core.errors import ConfigError

# style -> (default gaps [g0, g1], stochastic ratio rho); from the official README / configs:
# few: every step jumps to data (r = 0) and re-noises with fresh noise (consistency-style multistep);
# any: r = next time, deterministic; mul: r = current time (the plain ODE).
STYLE_DEFAULTS = {
    "few": {"gaps": {1: (0.001, 0.0), 2: (0.001, 0.6), "default": (0.001, 0.5)}, "rho": 1.0},
    "any": {"gaps": {"default": (0.001, 0.5)}, "rho": 0.0},
    "mul": {"gaps": {"default": (0.001, 0.0)}, "rho": 0.0},
}


def kumaraswamy(u: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    return (1 - (1 - u**a) ** b) ** c


def time_grid(nfe: int, gaps=(0.001, 0.0), warp=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Decreasing times [t_0 ~ 1-g0, ..., 0] with nfe + 1 entries (official discretisation)."""
    if nfe < 1:
        raise ConfigError(f"nfe must be >= 1, got {nfe}")
    g0, g1 = gaps
    points = nfe + 1 if g1 == 0.0 else nfe
    u = torch.linspace(g0, 1.0 - g1, points, dtype=torch.float64)
    if g1 == 0.0:
        u = u[:-1]
    u = kumaraswamy(u, *warp)
    return torch.cat([1.0 - u, torch.zeros(1, dtype=torch.float64)])


def _full(value: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n,), float(value), dtype=like.dtype, device=like.device)


@torch.no_grad()
def sample(
    net,
    z: torch.Tensor,
    cond=None,
    nfe: int = 1,
    style: str = "few",
    gaps=None,
    rho=None,
    warp=(1.0, 1.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Any-step sampling with exactly `nfe` network evaluations.

    Official 'few' times: 1 NFE [0.999, 0]; 2 NFE [0.999, 0.6, 0]; 4 NFE [0.999, 0.833, 0.666, 0.5, 0].
    At 1 NFE this returns z - 0.999*F(z, 0.999, 0), essentially the generator z - F(z, 1, 0).
    """
    if style not in STYLE_DEFAULTS:
        raise ConfigError(f"unknown sampling style {style!r}; choose one of {', '.join(STYLE_DEFAULTS)}")
    defaults = STYLE_DEFAULTS[style]
    if gaps is None:
        gaps = defaults["gaps"].get(nfe, defaults["gaps"]["default"])
    rho = defaults["rho"] if rho is None else rho
    times = time_grid(nfe, gaps, warp)
    n = z.shape[0]
    x = z
    x_hat = z
    for t_cur, t_next in zip(times[:-1], times[1:]):
        r = {"few": torch.zeros((), dtype=times.dtype), "any": t_next, "mul": t_cur}[style]
        F = net(x, _full(t_cur, n, z), _full(r, n, z), cond)
        tc, tn = float(t_cur), float(t_next)
        x_hat = x - tc * F
        z_hat = x + (1.0 - tc) * F
        if tn == 0.0:
            break
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device) if rho > 0 else 0.0
        x = (1.0 - tn) * x_hat + tn * (z_hat * (1.0 - rho) ** 0.5 + noise * rho**0.5)
    return x_hat


@torch.no_grad()
def euler(net, z: torch.Tensor, cond=None, steps: int = 50, cfg_scale: float = 0.0, uncond=None) -> torch.Tensor:
    """Plain Euler on the instantaneous velocity F(x, t, t), t from 1 to 0 in `steps` uniform steps.

    cfg_scale w > 0 uses F = F_c + w*(F_c - F_u), the convention of the baked-in CFG target
    (enhanced_ratio w): w = 0.5 is classic guidance 1.5. Each guided step costs 2 evaluations.
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if cfg_scale > 0 and uncond is None:
        raise ConfigError("euler: cfg_scale > 0 needs the unconditional condition `uncond`")
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    n = z.shape[0]
    x = z
    for t_cur, t_next in zip(times[:-1], times[1:]):
        t = _full(t_cur, n, z)
        F = net(x, t, t, cond)
        if cfg_scale > 0:
            F = F + cfg_scale * (F - net(x, t, t, uncond))
        x = x - float(t_cur - t_next) * F
    return x

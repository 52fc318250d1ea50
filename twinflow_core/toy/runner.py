"""Train one method on a 2-D distribution and measure it at several NFE (the `twinflow toy` command's engine).

The data are standardised for training and mapped back for samples and metrics. Every method of the objective
registry (twinflow_core/objectives) can be trained: fm is sampled with plain Euler at every NFE; the others with
their registered few-step sampler (rcgm, twinflow: the official "few"; meanflow: the deterministic "any" chain
over equal intervals) up to 8 NFE and the ODE ("mul") beyond.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from twinflow_core import objectives
from twinflow_core.ema import EMA
from twinflow_core.errors import ConfigError
from twinflow_core.nets import build_net
from twinflow_core.objective import sanitize_and_clip_grads_
from twinflow_core.sampler import euler, sample
from twinflow_core.toy import data2d, metrics2d
from twinflow_core.viz import save_scatter


@dataclass
class ToyConfig:
    data: str = "8gaussians"
    method: str = "twinflow"
    steps: int = 2000  # the budget bench/results/toy.md was measured at
    seed: int = 0
    nfe: tuple = (1, 2, 4, 50)
    batch_size: int = 512
    lr: float = 1e-3
    lr_final: float = 1e-4
    hidden: int = 256
    depth: int = 4
    ema_decay: float = 0.0  # the teacher: 0 = online model; EMA lags at these step counts
    n_samples: int = 10_000
    objective: dict = field(default_factory=dict)  # overrides on top of the method's preset

    def objective_config(self):
        method = objectives.get(self.method)
        return method.config(**{**method.toy, **self.objective})


def sampler_for(method: str, nfe: int) -> dict:
    """Keyword arguments of `sampler.sample` (style "euler": plain Euler) for `nfe` evaluations."""
    registered = objectives.get(method).sampler
    if registered["style"] == "euler":
        return {"style": "euler"}
    return dict(registered) if nfe <= 8 else {"style": "mul"}


def generate(net, method: str, nfe: int, n: int, seed: int) -> tuple[np.ndarray, str]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=gen)
    kwargs = sampler_for(method, nfe)
    if kwargs["style"] == "euler":
        return euler(net, z, steps=nfe).numpy(), "euler"
    return sample(net, z, nfe=nfe, generator=gen, **kwargs).numpy(), kwargs["style"]


def train(cfg: ToyConfig, train_data: np.ndarray, progress: bool = True):
    """Returns (net, seconds per step). Standardised data in, net trained on them."""

    # One thread: for a 2-D MLP, intra-op threading costs more than it gains, and with other processes on a
    # 2-core machine it made steps up to 10x slower (measured 32 ms vs 195 ms per TwinFlow step).
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    net = build_net("mlp2d", hidden=cfg.hidden, depth=cfg.depth)
    objective = objectives.build_objective(cfg.objective_config())
    ema = EMA(net, cfg.ema_decay)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gamma = (cfg.lr_final / cfg.lr) ** (1.0 / max(cfg.steps, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    data = torch.as_tensor(train_data, dtype=torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(
        range(cfg.steps),
        desc=f"{cfg.method} on {Path(cfg.data).name}",
        disable=not progress,
        mininterval=1.0,
        leave=False,
    )
    start = time.perf_counter()
    for _ in bar:
        x = data[torch.randint(0, len(data), (cfg.batch_size,), generator=gen)]
        loss, stats = objective(net, x, ema=ema)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sanitize_and_clip_grads_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{stats['loss']:.3f}", refresh=False)
    seconds = (time.perf_counter() - start) / max(cfg.steps, 1)
    return ema.teacher(net) if cfg.ema_decay > 0 else net, seconds


def run(cfg: ToyConfig, out: str | Path, progress: bool = True, plots: bool = True) -> dict:
    if cfg.method not in objectives.names():
        raise ConfigError(f"unknown --method {cfg.method!r}; choose one of {', '.join(objectives.names())}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_raw, held_out = data2d.make_split(cfg.data, cfg.seed)
    mean, std = train_raw.mean(0), train_raw.std(0)
    t0 = time.perf_counter()
    net, sec_per_step = train(cfg, (train_raw - mean) / std, progress)
    train_seconds = time.perf_counter() - t0
    net.eval()
    results = {
        "config": {**asdict(cfg), "nfe": list(cfg.nfe)},
        "train_seconds": train_seconds,
        "seconds_per_step": sec_per_step,
        "nfe": {},
    }
    for k in cfg.nfe:
        samples, style = generate(net, cfg.method, k, cfg.n_samples, cfg.seed + 1)
        samples = samples * std + mean
        np.save(out / f"samples_nfe{k}.npy", samples)
        entry = {"sampler": style, **metrics2d.all_metrics(samples, held_out, seed=cfg.seed)}
        if cfg.data == "8gaussians":
            entry.update(metrics2d.mode_coverage(samples, data2d.eight_gaussian_centers(), data2d.EIGHT_GAUSSIANS_STD))
        results["nfe"][str(k)] = entry
        if plots:
            save_scatter(
                {"held-out data": held_out, f"{cfg.method} @ {k} NFE": samples},
                out / f"scatter_nfe{k}.png",
                title=f"{Path(cfg.data).name}: {cfg.method}, {cfg.steps} steps, seed {cfg.seed}",
            )
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    return results

"""Step time and peak memory of TwinFlow vs flow matching on a tiny SD3 transformer, full and LoRA.

    python bench/adapters_step_cost.py                 # time: the 4 settings alternated over --rounds rounds
    python bench/adapters_step_cost.py --memory full twinflow   # one setting alone: its peak RSS (VmHWM)

Times are medians of optimiser steps (objective + backward + AdamW); on a shared CPU they are inflated, which
is why the settings alternate within one process and the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["a", "red", "blue", "circle", "square"]


def setting(mode: str, objective: str, batch: int):
    from twinflow_core.adapters.lora import add_lora, lora_parameters
    from twinflow_core.adapters.tiny import tiny_transformer
    from twinflow_core.adapters.velocity import TransformerVelocity
    from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective

    net = TransformerVelocity(tiny_transformer("sd3", seed=0), "sd3", time_input="half" if mode == "lora" else "gated")
    if mode == "lora":
        add_lora(net, rank=8, alpha=8)
    params = lora_parameters(net) if mode == "lora" else list(net.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    cfg = ObjectiveConfig.preset(objective, **({"enhanced_ratio": 0.5} if objective == "twinflow" else {}))
    obj = TwinFlowObjective(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    cond = {"prompt_embeds": torch.randn(batch, 8, 32, generator=g), "pooled": torch.randn(batch, 32, generator=g)}
    uncond = {k: torch.zeros_like(v) for k, v in cond.items()}

    def step():
        t0 = time.perf_counter()
        loss, _ = obj(net, x, cond, uncond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory", nargs=2, metavar=("MODE", "OBJECTIVE"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory:
        step = setting(*args.memory, args.batch)
        before = vm_hwm_mb()
        for _ in range(args.steps):
            step()
        print(
            json.dumps(
                {"setting": args.memory, "vm_hwm_mb_after_setup": round(before, 1), "vm_hwm_mb": round(vm_hwm_mb(), 1)}
            )
        )
        return
    names = [(m, o) for m in ("full", "lora") for o in ("fm", "twinflow")]
    steps = {n: setting(*n, args.batch) for n in names}
    times = {n: [] for n in names}
    for n in names:
        steps[n]()  # warm-up
    for _ in range(args.rounds):
        for n in names:
            times[n] += [steps[n]() for _ in range(args.steps)]
    med = {f"{m}/{o}": round(statistics.median(times[(m, o)]) * 1000, 2) for m, o in names}
    out = {
        "batch": args.batch,
        "threads": args.threads,
        "median_ms": med,
        "twinflow_over_fm": {m: round(med[f"{m}/twinflow"] / med[f"{m}/fm"], 2) for m in ("full", "lora")},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

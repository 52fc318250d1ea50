"""Device check: SD3.5-Medium's transformer config with all 24 layers at 512 px (64x64x16 latents, 1024 image
tokens), random init, bf16-mixed (fp32 master weights, autocast bf16), on one GPU:
- 50 optimiser steps each of TwinFlow and flow matching, full fine-tuning (EMA copy 0.99) and LoRA (rank 64,
  EMA adapter), batch 4, 77 prompt tokens, gradient checkpointing: median step time, peak GPU memory;
- sampling throughput: TwinFlow 1 NFE against the 28-step base (Euler, classifier-free guidance: 56 evaluations),
  transformer only (prompt embeddings random: text encoders and VAE are the same for both and left out), batch 8.
Run by bench/device_sd35_full_width.sh (one command, under 10 minutes on an H100); writes
device_sd35_full_width.json and .md into --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _sync():
    import torch

    torch.cuda.synchronize()


def _inputs(batch: int, device):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 16, 64, 64, generator=g).to(device)
    cond = {
        "prompt_embeds": torch.randn(batch, 77, 4096, generator=g).to(device),
        "pooled": torch.randn(batch, 2048, generator=g).to(device),
    }
    uncond = {k: torch.zeros_like(v) for k, v in cond.items()}
    return x, cond, uncond


def train(mode: str, objective: str, steps: int, device, deadline: float) -> dict:
    import torch
    from real_width import transformer

    from twinflow_core.adapters.velocity import TransformerVelocity
    from twinflow_core.ema import EMA
    from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective

    tr = transformer("sd3", layers=24, device=device)
    tr.enable_gradient_checkpointing()
    net = TransformerVelocity(tr, "sd3", time_input="half" if mode == "lora" else "gated").to(device)
    if mode == "lora":
        from twinflow_core.adapters.lora import LoraTeacher, add_lora, lora_parameters

        add_lora(net, rank=64, alpha=64, ema=True)
        net.to(device)
        teacher, params = LoraTeacher(net, 0.99), lora_parameters(net)
    else:
        teacher, params = EMA(net, 0.99), [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    obj = TwinFlowObjective(
        ObjectiveConfig.preset(objective, **({"enhanced_ratio": 0.5} if objective == "twinflow" else {}))
    )
    x, cond, uncond = _inputs(4, device)
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps):
        if time.time() > deadline:
            break
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = obj(net, x, cond, uncond, ema=teacher)  # both hold and update the EMA teacher
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    out = {
        "mode": mode,
        "objective": objective,
        "steps": len(times),
        "median_step_s": round(statistics.median(times[1:] or times), 4),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "params": sum(p.numel() for p in net.parameters()),
        "trainable": sum(p.numel() for p in params),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
        "finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
    }
    del net, teacher, opt, params, tr
    gc.collect()
    torch.cuda.empty_cache()
    return out


def sampling(device, deadline: float, batch: int = 8) -> dict:
    import torch
    from real_width import transformer

    from twinflow_core.adapters.velocity import TransformerVelocity
    from twinflow_core.sampler import euler, sample

    net = TransformerVelocity(transformer("sd3", layers=24, device=device), "sd3").to(device, torch.bfloat16).eval()
    x, cond, uncond = _inputs(batch, device)
    x = x.to(torch.bfloat16)
    cond = {k: v.to(torch.bfloat16) for k, v in cond.items()}
    uncond = {k: v.to(torch.bfloat16) for k, v in uncond.items()}
    out = {"batch": batch, "dtype": "bfloat16"}
    with torch.no_grad():
        for name, fn in (
            ("twinflow_1nfe", lambda: sample(net, x, cond, nfe=1)),
            ("base_euler_28_cfg", lambda: euler(net, x, cond, steps=28, cfg_scale=3.5, uncond=uncond)),
        ):
            fn()  # warm-up
            _sync()
            reps, t0 = 0, time.perf_counter()
            while reps < (20 if name == "twinflow_1nfe" else 3) and time.time() < deadline:
                fn()
                reps += 1
            _sync()
            out[name + "_images_per_s"] = round(batch * reps / (time.perf_counter() - t0), 2) if reps else None
    if out.get("base_euler_28_cfg_images_per_s"):
        out["speedup"] = round(out["twinflow_1nfe_images_per_s"] / out["base_euler_28_cfg_images_per_s"], 1)
    net = None  # frees the weights before the next measurement (the lambdas above close over the name)
    torch.cuda.empty_cache()
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting new steps after this")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("device check: no CUDA device")
    device = torch.device("cuda")
    deadline = time.time() + args.budget_s
    per = (args.budget_s - 60) / 4
    result = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "config": "SD3.5-Medium, 24 layers, "
        "512 px (64x64x16 latents), batch 4, 77 prompt tokens, bf16-mixed, gradient checkpointing",
        "train": [],
    }
    for mode, objective in (("full", "twinflow"), ("full", "fm"), ("lora", "twinflow"), ("lora", "fm")):
        r = train(mode, objective, args.steps, device, min(deadline - 60, time.time() + per))
        result["train"].append(r)
        print(json.dumps(r), flush=True)
    result["sampling"] = sampling(device, deadline)
    print(json.dumps(result["sampling"]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_sd35_full_width.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# SD3.5-Medium at full width on one GPU (bench/device_sd35_full_width.sh)",
        "",
        f"{result['gpu']}, torch {result['torch']}; {result['config']}.",
        "",
        "| setting | objective | steps | median step (s) | peak GPU memory (GB) | trainable | finite |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["train"]:
        lines.append(
            f"| {r['mode']} | {r['objective']} | {r['steps']} | {r['median_step_s']} | {r['peak_gpu_gb']} | "
            f"{r['trainable'] / 1e6:.0f}M | {r['finite']} |"
        )
    s = result["sampling"]
    lines += [
        "",
        f"Sampling (transformer only, batch {s['batch']}, bf16): TwinFlow 1 NFE "
        f"{s.get('twinflow_1nfe_images_per_s')} images/s; base Euler 28 steps with CFG "
        f"{s.get('base_euler_28_cfg_images_per_s')} images/s; x{s.get('speedup')}.",
        "",
    ]
    (out / "device_sd35_full_width.md").write_text("\n".join(lines))
    print(f"wrote {out / 'device_sd35_full_width.md'}")


if __name__ == "__main__":
    main()

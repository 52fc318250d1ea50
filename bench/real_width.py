"""The real transformer widths on CPU: SD3.5-Medium, Qwen-Image and SANA-1.6B at their official configs with 1-2
layers, random init. One TwinFlow optimiser step (full / LoRA, fp32 / bf16-mixed) and one 1-NFE sample, each
setting in its own process (peak RSS is per process), then a memory model checked against the measurements and
extrapolated to the whole models on 80 GB GPUs.

    nice -n 19 python bench/real_width.py                 # every setting (one child process each), writes
                                                          # bench/results/real_width.md and .json
    python bench/real_width.py --one sd3 full bf16        # one setting in this process: prints its JSON line
    python bench/real_width.py --report                   # rewrite the .md from the saved .json

Configs (diffusers config.json values; SD3.5-Medium's read from stabilityai/stable-diffusion-3.5-medium, the
others equal diffusers 0.42's class defaults, which are the released models'):
- SD3.5-Medium: SD3Transformer2DModel, 24 heads x 64 = 1536 wide, joint_attention_dim 4096, caption_projection 1536,
  pooled 2048, 16 latent channels, patch 2, pos_embed_max_size 384, dual attention in layers 0-12, RMS qk-norm.
- Qwen-Image: QwenImageTransformer2DModel, 24 heads x 128 = 3072 wide, joint_attention_dim 3584 (Qwen2.5-VL-7B),
  in 64 (16 channels x 2x2 patches), rope axes (16, 56, 56), 60 layers.
- SANA-1.6B (1024 px): SanaTransformer2DModel, 70 heads x 32 = 2240 wide, cross-attention 20 x 112,
  caption 2304 (Gemma-2-2B), 32 latent channels (DC-AE f32c32), patch 1, mlp ratio 2.5, 20 layers.
Every setting: batch 4 (the four TwinFlow buckets), 256 image tokens (SD3 / Qwen-Image 32x32x16 latents = 256 px;
SANA 16x16x32 = 512 px), 77 prompt tokens, gradient checkpointing on, AdamW, an EMA teacher (full: an EMA copy
of the transformer, decay 0.99; LoRA rank 64 / alpha 64: the EMA adapter), the project's TwinFlow objective
(enhanced_ratio 0.5), one thread. bf16-mixed: fp32 master weights, forward under torch.autocast(bfloat16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
BATCH, PROMPT_LEN, IMAGE_TOKENS = 4, 77, 256

REAL = {
    "sd3": dict(
        cls="SD3Transformer2DModel",
        name="SD3.5-Medium",
        full_layers=24,
        layers=1,
        kw=dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=384,
            qk_norm="rms_norm",
            dual_attention_layers=tuple(range(13)),
        ),
    ),
    "qwen_image": dict(
        cls="QwenImageTransformer2DModel",
        name="Qwen-Image",
        full_layers=60,
        layers=1,
        kw=dict(
            patch_size=2,
            in_channels=64,
            out_channels=16,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=3584,
            axes_dims_rope=(16, 56, 56),
        ),
    ),
    "sana": dict(
        cls="SanaTransformer2DModel",
        name="SANA-1.6B",
        full_layers=20,
        layers=1,
        kw=dict(
            in_channels=32,
            out_channels=32,
            num_attention_heads=70,
            attention_head_dim=32,
            num_cross_attention_heads=20,
            cross_attention_head_dim=112,
            cross_attention_dim=2240,
            caption_channels=2304,
            mlp_ratio=2.5,
            sample_size=32,
            patch_size=1,
        ),
    ),
}
# latents (C, H, W) giving IMAGE_TOKENS tokens, and the 1024 px token count for the extrapolation
LATENTS = {"sd3": (16, 32, 32), "qwen_image": (16, 32, 32), "sana": (32, 16, 16)}
TOKENS_1024 = {"sd3": 4096, "qwen_image": 4096, "sana": 1024}
SETTINGS = [
    (f, m, p)
    for f in ("sd3", "sana", "qwen_image")
    for m, p in (("sample", "fp32"), ("lora", "bf16"), ("full", "bf16"), ("lora", "fp32"), ("full", "fp32"))
]
# one layer each: the widths are the point, and a shared 2-core machine runs the 15 settings in about an hour


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so the next peak is the step's alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def transformer(family: str, layers: int | None = None, device=None):
    import diffusers
    import torch

    spec = REAL[family]
    cls = getattr(diffusers, spec["cls"])
    kw = dict(spec["kw"], num_layers=layers or spec["layers"])
    if family == "sd3":
        kw["dual_attention_layers"] = tuple(i for i in spec["kw"]["dual_attention_layers"] if i < kw["num_layers"])
    if device == "meta":
        with torch.device("meta"):
            return cls(**kw)
    torch.manual_seed(0)
    if device is not None:  # initialised where it runs (a 2B-parameter init on a GPU takes a second)
        with torch.device(device):
            return cls(**kw)
    return cls(**kw)


def param_counts(family: str) -> dict:
    """Exact parameter counts of the whole model (built on the meta device) and of one layer, with the r
    embedding (a copy of the native time embedding) and the rank-64 LoRA on the official targets."""
    from twinflow_core.adapters.families import get_family
    from twinflow_core.adapters.lora import TARGETS

    fam = get_family(family)
    full = transformer(family, REAL[family]["full_layers"], device="meta")
    r_embed = sum(p.numel() for p in getattr(full, fam.time_embed).parameters())
    total = sum(p.numel() for p in full.parameters())
    blocks = full.transformer_blocks
    per_layer = [sum(p.numel() for p in b.parameters()) for b in blocks]
    lora = 0
    for name, mod in full.named_modules():
        if any(name.endswith(t) for t in TARGETS[family]) and hasattr(mod, "in_features"):
            lora += 64 * (mod.in_features + mod.out_features)
    # buffers (SD3's sin-cos position table: pos_embed_max_size^2 x width fp32, 0.9 GB for SD3.5-Medium) are in
    # every copy of the model, the EMA copy included
    buffers = sum(b.numel() * b.element_size() for b in full.buffers())
    return {
        "total": total,
        "r_embed": r_embed,
        "buffer_bytes": buffers,
        "per_layer_max": max(per_layer),
        "per_layer_min": min(per_layer),
        "lora_rank64": lora,
        "layers": len(blocks),
    }


def build(family: str, mode: str):
    import torch

    from twinflow_core.adapters.velocity import TransformerVelocity

    tr = transformer(family)
    tr.enable_gradient_checkpointing()
    net = TransformerVelocity(tr, family, time_input="half" if mode == "lora" else "gated")
    g = torch.Generator().manual_seed(0)
    c, h, w = LATENTS[family]
    x = torch.randn(BATCH, c, h, w, generator=g)
    dim = {"sd3": 4096, "qwen_image": 3584, "sana": 2304}[family]
    cond = {"prompt_embeds": torch.randn(BATCH, PROMPT_LEN, dim, generator=g)}
    if family == "sd3":
        cond["pooled"] = torch.randn(BATCH, 2048, generator=g)
    else:
        cond["mask"] = torch.ones(BATCH, PROMPT_LEN, dtype=torch.long)
    uncond = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in cond.items()}
    return net, x, cond, uncond


def run_one(family: str, mode: str, precision: str) -> dict:
    import contextlib

    import torch

    torch.set_num_threads(1)
    from twinflow_core.ema import EMA
    from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective

    t0 = time.perf_counter()
    net, x, cond, uncond = build(family, "lora" if mode == "lora" else "full")
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    out = {
        "family": family,
        "mode": mode,
        "precision": precision,
        "layers": REAL[family]["layers"],
        "params": sum(p.numel() for p in net.parameters()),
    }
    if mode == "sample":
        from twinflow_core.sampler import sample

        net.eval()
        with autocast():
            sample(net, x, cond, nfe=1)  # warm-up
        out["setup_s"] = round(time.perf_counter() - t0, 1)
        out["rss_before_mb"] = round(_status("VmRSS"), 1)
        _reset_peak()
        t1, c1 = time.perf_counter(), time.process_time()
        with autocast():
            y = sample(net, x, cond, nfe=1)
        out["time_s"], out["cpu_s"] = round(time.perf_counter() - t1, 2), round(time.process_time() - c1, 2)
        out["finite"] = bool(torch.isfinite(y).all())
    else:
        if mode == "lora":
            from twinflow_core.adapters.lora import LoraTeacher, add_lora, lora_parameters

            add_lora(net, rank=64, alpha=64, ema=True)
            teacher = LoraTeacher(net, 0.99)
            params = lora_parameters(net)
        else:
            teacher = EMA(net, 0.99)
            params = [p for p in net.parameters() if p.requires_grad]
        out["trainable"] = sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=1e-5)
        obj = TwinFlowObjective(ObjectiveConfig.preset("twinflow", enhanced_ratio=0.5))

        def step():
            with autocast():
                loss, _ = obj(net, x, cond, uncond, ema=teacher)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

        if mode == "full":
            step()  # warm-up: allocates AdamW's state (20 B/param in all); a LoRA's is negligible: measured cold
        out["warm_up"] = mode == "full"
        out["setup_s"] = round(time.perf_counter() - t0, 1)
        out["rss_before_mb"] = round(_status("VmRSS"), 1)
        _reset_peak()
        t1, c1 = time.perf_counter(), time.process_time()
        loss = step()
        out["time_s"], out["cpu_s"] = round(time.perf_counter() - t1, 2), round(time.process_time() - c1, 2)
        out["finite"] = bool(torch.isfinite(torch.tensor(loss)))
    out["peak_rss_mb"] = round(_status("VmHWM"), 1)
    out["step_peak_over_before_mb"] = round(out["peak_rss_mb"] - out["rss_before_mb"], 1)
    return out


# ---- memory model
GB = 1e9


def static_bytes(p: dict, mode: str, precision: str) -> float:  # noqa: ARG001  (the same in both precisions)
    """Bytes of the training state: full: weights + grads + AdamW (2) + EMA copy, all fp32 (bf16-mixed keeps
    fp32 master weights; the autocast copies are transient); LoRA: the frozen base (fp32 here; bf16 on GPU halves
    it) + the adapter and its EMA adapter with grads and AdamW."""
    n = p["total"] + p["r_embed"]
    if mode == "full":
        return 4 * n * (1 + 1 + 2 + 1) + 2 * p["buffer_bytes"]
    return 4 * p["total"] + 4 * p["lora_rank64"] * (1 + 1 + 1 + 2) + p["buffer_bytes"]


WIDTH = {"sd3": 1536, "qwen_image": 3072, "sana": 2240}


def boundary_bytes(family: str, image_tokens: int) -> float:
    """Bytes one checkpointed layer keeps per image: its input hidden states (MMDiT: image and text streams)."""
    tokens = image_tokens + (PROMPT_LEN if family in ("sd3", "qwen_image") else 0)
    return 4.0 * tokens * WIDTH[family]


def model_rows(results: list[dict]) -> list[dict]:
    """Per family and setting: the model's predicted static state at the measured layer count against the
    measured RSS before the step (minus the import baseline), the activations per image and layer (the step's
    peak over the state, less the gradients), and the whole model at 1024 px on GPUs."""
    rows = []
    counts = {f: param_counts(f) for f in REAL}
    base = {r["family"]: r for r in results if r["mode"] == "sample" and r["precision"] == "fp32"}
    for r in results:
        if r["mode"] == "sample" or r["family"] not in base:
            continue
        f, p = r["family"], counts[r["family"]]
        layers = r["layers"]
        # the state held before the measured step, by the same accounting: full (after one step) weights, EMA,
        # AdamW and the last step's gradients, 20 B/param; LoRA (before its first step) the base and both adapters
        buf = p["buffer_bytes"]
        if r["mode"] == "full":
            predicted = (20 * r["params"] + 2 * buf) / 1e6
        else:
            predicted = (4 * (r["params"] - 2 * r["trainable"]) + 8 * r["trainable"] + buf) / 1e6
        imports = base[f]["rss_before_mb"] - (4 * base[f]["params"] + buf) / 1e6
        measured_static = r["rss_before_mb"] - imports
        # the step's peak over that state: activations (full: the old gradients are freed before backward makes
        # new ones; a LoRA's gradients and AdamW state are small)
        act_per_image_layer = max(r["step_peak_over_before_mb"], 0.0) / BATCH / layers
        whole_static = static_bytes(p, r["mode"], r["precision"]) / GB
        if r["mode"] == "lora":  # on GPU the frozen base is held in bf16
            whole_static -= 2 * p["total"] / GB
        # activations under gradient checkpointing: every layer keeps only its input (the image tokens, and for
        # the MMDiT families the text tokens too, x width, fp32 counted), and one layer at a time is recomputed
        # with its internals: the measured one-layer step peak, scaled by the image tokens
        act_1024 = (
            act_per_image_layer * layers * TOKENS_1024[f] / IMAGE_TOKENS
            + p["layers"] * boundary_bytes(f, TOKENS_1024[f]) / 1e6
        ) / 1e3
        # the measured state per parameter, scaled to the whole model: the conservative figure for the GPU plan
        # (full: the formula's 20 B/param plus what the allocator and the step's leftovers hold)
        if r["mode"] == "full":
            per_param = (measured_static * 1e6 - 2 * buf) / r["params"]
            whole_measured = (per_param * (p["total"] + p["r_embed"]) + 2 * buf) / GB
        else:
            per_param = (measured_static * 1e6 - buf) / (r["params"] - 2 * r["trainable"])
            whole_measured = ((per_param / 2) * p["total"] + 20 * p["lora_rank64"] + buf) / GB  # bf16 base on GPU
        rows.append(
            {
                "family": f,
                "mode": r["mode"],
                "precision": r["precision"],
                "layers": layers,
                "measured_bytes_per_param": round(per_param, 1),
                "whole_static_measured_gb": round(max(whole_measured, whole_static), 1),
                "predicted_static_mb": round(predicted),
                "measured_static_mb": round(measured_static),
                "act_mb_per_image_layer": round(act_per_image_layer, 1),
                "whole_static_gb": round(whole_static, 1),
                "whole_act_gb_per_image_1024": round(act_1024, 1),
            }
        )
    return rows


def gpu_plan(row: dict) -> str:
    """Images per 80 GB GPU (model state replicated), else the GPUs FSDP needs to shard the state to 60 GB."""
    state = row["whole_static_measured_gb"]
    free = 80 - 6 - state  # ~6 GB: CUDA context, allocator slack, text encoders offloaded
    act = row["whole_act_gb_per_image_1024"]
    if free > act:
        return f"1 GPU, micro-batch {int(free // act)}"
    import math

    n = math.ceil(state / (74 - 4 * act)) if 74 - 4 * act > 0 else 0
    return f"FSDP over >= {max(n, 2)} GPUs (micro-batch 4)" if n else "activation offload needed"


def report(data: dict) -> str:
    results, counts = data["results"], data["counts"]
    lines = [
        "# Real transformer widths on CPU (bench/real_width.py)",
        "",
        f"Measured {data['when']} on {data['machine']}; one thread, each setting in its own process "
        "(`nice -n 19`), random init, batch 4, 256 image tokens, 77 prompt tokens, gradient checkpointing, "
        "AdamW + EMA teacher, the project's TwinFlow objective (enhanced_ratio 0.5). Full fine-tuning: the "
        "second optimiser step is measured (the first allocates AdamW's state); LoRA: the first; `peak RSS` is the process's VmHWM over that step.",
        "",
        "Reproduce: `nice -n 19 .venv/bin/python bench/real_width.py` (about an hour here: 2 shared cores under load; CPU times in the table are the processes' own).",
        "",
        "| model | layers | setting | precision | params | trainable | wall (s) | CPU (s) | RSS before (MB) | peak RSS (MB) | finite |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {REAL[r['family']]['name']} | {r['layers']} | {r['mode']} | {r['precision']} | "
            f"{r['params'] / 1e6:.0f}M | {r.get('trainable', 0) / 1e6:.1f}M | {r['time_s']} | {r.get('cpu_s', '')} | "
            f"{r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['finite']} |"
        )
    lines += [
        "",
        "## Whole models (parameter counts from the configs, built on the meta device)",
        "",
        "| model | layers | params | r embedding | params per layer | LoRA rank 64 (official targets) |",
        "|---|---|---|---|---|---|",
    ]
    for f, p in counts.items():
        lines.append(
            f"| {REAL[f]['name']} | {p['layers']} | {p['total'] / 1e9:.2f}B | {p['r_embed'] / 1e6:.1f}M | "
            f"{p['per_layer_min'] / 1e6:.0f}-{p['per_layer_max'] / 1e6:.0f}M | {p['lora_rank64'] / 1e6:.1f}M |"
        )
    rows = data["model"]
    lines += [
        "",
        "By the formula below alone (exact parameter counts; activations: the checkpointed layer inputs at "
        "1024 px, without the one recomputed layer, which the measured rows add):",
        "",
        "| model | full: state (GB) | full on 80 GB GPUs | LoRA r64: state, bf16 base (GB) | kept activations (GB / image, 1024 px) |",
        "|---|---|---|---|---|",
    ]
    for f, p in counts.items():
        full = (20 * (p["total"] + p["r_embed"]) + 2 * p["buffer_bytes"]) / GB
        lora = (2 * p["total"] + 20 * p["lora_rank64"] + p["buffer_bytes"]) / GB
        kept = p["layers"] * boundary_bytes(f, TOKENS_1024[f]) / GB
        shards = "1 GPU" if full < 60 else f"FSDP, >= {int(-(-full // 60))} GPUs for the state"
        lines.append(f"| {REAL[f]['name']} | {full:.0f} | {shards} | {lora:.1f} | {kept:.2f} |")
    lines += [
        "",
        "## Memory model",
        "",
        "State bytes per parameter P (fp32 master weights in both precisions): full fine-tuning = weights 4 + "
        "gradients 4 + AdamW 8 + EMA copy 4 = **20 B/param** (the r embedding included); LoRA = the frozen base "
        "(4 B/param in fp32, 2 in bf16) + 20 B per adapter parameter (adapter + EMA adapter 8, gradients 4, "
        "AdamW 8); plus the model's buffers once per copy (SD3's fixed sin-cos position table, "
        "pos_embed_max_size^2 x width x 4 B = 0.91 GB for SD3.5-Medium, is held by the model and again by "
        "the EMA copy). Activations per image with gradient checkpointing: each layer keeps its input, (image tokens "
        "+ text tokens for the MMDiT families) x width x 4 B, and one layer at a time is recomputed with its "
        "internals: the measured one-layer peak (the step's peak RSS over the RSS before it, per image), "
        "scaled linearly by image tokens.",
        "",
        "Check against the measurements (static state at the measured depth: predicted by the formula vs "
        "the RSS before the step less the imports, i.e. less the sampling process's RSS net of its fp32 weights and buffers):",
        "",
        "| model | setting | precision | predicted state (MB) | measured state (MB) | measured B/param (buffers excluded) | activations (MB / image / layer, 256 tokens) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {REAL[row['family']]['name']} | {row['mode']} | {row['precision']} | "
            f"{row['predicted_static_mb']} | {row['measured_static_mb']} | {row['measured_bytes_per_param']} | "
            f"{row['act_mb_per_image_layer']} |"
        )
    lines += [
        "",
        "Extrapolated to the whole models at 1024 px on 80 GB GPUs (bf16-mixed rows; activations at "
        "1024 px tokens; ~6 GB reserved for the CUDA context and allocator slack):",
        "",
        "| model | setting | state by formula (GB) | state as measured (GB) | activations (GB / image) | fits as |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["precision"] != "bf16":
            continue
        lines.append(
            f"| {REAL[row['family']]['name']} | {row['mode']} | {row['whole_static_gb']} | "
            f"{row['whole_static_measured_gb']} | {row['whole_act_gb_per_image_1024']} | {gpu_plan(row)} |"
        )
    lines += [
        "",
        "Notes: CPU RSS counts what a GPU run holds on the device (weights, state, activations) plus the "
        "Python / torch / diffusers imports (the sampling process's RSS less its weights). The activation "
        "extrapolation ignores attention's quadratic term (SDPA on GPU keeps it linear); the device check (bench/device_sd35_full_width.sh) measures SD3.5-Medium whole. Qwen-Image full holds 16% "
        "less than the formula at one layer because that layer is the last block, whose text-stream outputs "
        "are discarded: those parameters get no gradient and no AdamW state (negligible at 60 layers).",
        "",
    ]
    return "\n".join(lines)


def _memory_for(family: str, mode: str, wait_s: float = 600.0) -> bool:
    """Wait (up to wait_s) until MemAvailable holds the setting's state (20 B/param for full fine-tuning) plus
    3 GB; a shared machine's other jobs must not be pushed into the OOM killer."""
    layers = REAL[family]["layers"]
    p = param_counts(family)
    shallow = p["total"] / p["layers"] * layers + 0.1e9  # embeddings and heads, generously
    need_gb = (20 if mode == "full" else 5) * shallow / GB + 3
    deadline = time.time() + wait_s
    while True:
        avail = _meminfo("MemAvailable") / 1e6
        if avail >= need_gb:
            return True
        if time.time() > deadline:
            return False
        time.sleep(15)


def _meminfo(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    return 0.0


def _save(results: list[dict]) -> dict:
    import platform

    data = {
        "when": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores "
        "(shared with other jobs: wall times inflated, CPU times are the process's own)",
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "real_width.json").write_text(json.dumps(data, indent=1) + "\n")
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=3, metavar=("FAMILY", "MODE", "PRECISION"))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--only", nargs="*", help="families to run (default: all)")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)), flush=True)
        return
    out_json = RESULTS / "real_width.json"
    if not args.report:
        results = []
        for f, m, p in SETTINGS:
            if args.only and f not in args.only:
                continue
            if not _memory_for(f, m):
                print(
                    f"{f} {m} {p}: skipped: not enough free memory on this shared machine", file=sys.stderr, flush=True
                )
                continue
            # a fixed mmap threshold: glibc then returns every freed tensor buffer to the OS, so RSS before a step
            # is the live state (not last step's freed activations) and the step's peak over it is its own
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
            done = subprocess.run(
                [sys.executable, __file__, "--one", f, m, p], capture_output=True, text=True, env=env, timeout=3600
            )
            line = (done.stdout.strip().splitlines() or [""])[-1]
            if done.returncode != 0 or not line.startswith("{"):
                print(f"{f} {m} {p}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr, flush=True)
                continue
            results.append(json.loads(line))
            print(line, flush=True)
            _save(results)  # a partial table survives an interrupted run
        data = _save(results)
    else:
        data = json.loads(out_json.read_text())
    data["counts"] = {f: param_counts(f) for f in REAL}
    data["model"] = model_rows(data["results"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / "real_width.md").write_text(report(data))
    print(f"wrote {RESULTS / 'real_width.md'}")


if __name__ == "__main__":
    main()

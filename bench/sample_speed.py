"""Sampling speed: images/s of the any-step sampler at 1, 2, 4 NFE against the flow-matching base at 50 Euler
steps with guidance (100 network calls), same net, batch and threads, in one process, alternating rounds.

    .venv/bin/python bench/sample_speed.py                      # the params.yaml `model` net, random weights
    .venv/bin/python bench/sample_speed.py --checkpoint checkpoints/twinflow --base checkpoints/base

Speed does not depend on the weights, only on the architecture: by default both sides are the default net of
params.yaml with random weights (the TwinFlow model is a fine-tune of its base, the same architecture). Each
round runs every setting once (1, 2, 4 NFE, then the 50-step guided base, rotated so no setting always comes
first), repeating a setting's batch until it has run for --min-seconds. Each setting is timed twice: by the
wall clock and by this process's CPU time (one torch thread, so CPU time is what the sampler itself cost; on a
shared machine it moves much less with the neighbours' load than wall time does). Figures are medians over
rounds; the ratios are medians of the per-round ratios (both sides within the same round). The headline is
the CPU-time ratio, the wall-time one beside it. Writes bench/results/sample_speed.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def default_generator(params_path: Path, seed: int):
    """A NetGenerator of the params.yaml `model` net with random weights and the shapes vocabulary."""
    import torch
    import yaml

    from twinflow_core.data import shapes
    from twinflow_core.nets import build_net
    from twinflow_core.nets.generator import NetGenerator
    from twinflow_core.text import Tokenizer
    from twinflow_core.training.config import ModelConfig

    model = ModelConfig(**yaml.safe_load(params_path.read_text())["model"])
    tok = Tokenizer(shapes.vocabulary(), max_len=32)
    kwargs = {**model.net_kwargs(), "vocab_size": tok.size, "max_len": tok.max_len}
    torch.manual_seed(seed)
    net = build_net(model.name, **kwargs).eval()
    meta = {"net": model.name, "net_kwargs": kwargs, "image": {"size": model.image_size, "channels": 3}}
    return NetGenerator(net, tok, meta), f"params.yaml model ({model.name}, {model.image_size} px, random weights)"


def timed(gen, captions, setting: dict, min_seconds: float) -> tuple[float, float]:
    """(images/s by wall clock, images/s by process CPU time) of one setting: its batch repeated until
    min_seconds of wall time have passed."""
    n, reps, t0, c0 = len(captions), 0, time.perf_counter(), time.process_time()
    while True:
        gen.generate(captions, seed=reps, **setting)
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return reps * n / dt, reps * n / max(time.process_time() - c0, 1e-9)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="TwinFlow generator checkpoint (default: random net)")
    ap.add_argument("--base", default=None, help="flow-matching base checkpoint (default: the same net)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "bench/results/sample_speed.md"))
    args = ap.parse_args(argv)

    import torch

    from twinflow_core.data import prompt_sets
    from twinflow_core.loader import load_generator

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, what = load_generator(args.checkpoint), f"checkpoint {args.checkpoint}"
    else:
        model, what = default_generator(Path(args.params), 0)
    base = load_generator(args.base) if args.base else model
    prompts = [r["prompt"] for r in prompt_sets.load_geneval_metadata(ROOT / "data/prompts")]
    captions = [prompts[i % len(prompts)] for i in range(args.batch)]
    ref = f"base euler{args.steps}-cfg{args.cfg:g}"
    settings = {
        "1 NFE": (model, {"nfe": 1, "style": "few"}),
        "2 NFE": (model, {"nfe": 2, "style": "few"}),
        "4 NFE": (model, {"nfe": 4, "style": "few"}),
        ref: (base, {"nfe": args.steps, "style": "euler", "cfg_scale": args.cfg}),
    }
    calls = {"1 NFE": 1, "2 NFE": 2, "4 NFE": 4, ref: args.steps * (2 if args.cfg > 0 else 1)}
    for gen, s in settings.values():  # warm-up (allocator, first-call overheads)
        gen.generate(captions[:8], **{**s, "nfe": min(s["nfe"], 2)})
    names = list(settings)
    rounds: list[dict[str, float]] = []
    cpu_rounds: list[dict[str, float]] = []
    t_start = time.perf_counter()
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        row, cpu_row = {}, {}
        for name in order:
            gen, s = settings[name]
            row[name], cpu_row[name] = timed(gen, captions, s, args.min_seconds)
        rounds.append(row)
        cpu_rounds.append(cpu_row)
        print(
            json.dumps(
                {
                    "round": r,
                    "wall": {k: round(v, 2) for k, v in row.items()},
                    "cpu": {k: round(v, 2) for k, v in cpu_row.items()},
                }
            ),
            flush=True,
        )
    wall = time.perf_counter() - t_start
    med = {k: statistics.median(r[k] for r in rounds) for k in names}
    cpu_med = {k: statistics.median(r[k] for r in cpu_rounds) for k in names}
    wall_ratio = {k: statistics.median(r[k] / r[ref] for r in rounds) for k in names if k != ref}
    ratio = {k: statistics.median(r[k] / r[ref] for r in cpu_rounds) for k in names if k != ref}
    spread = {k: (min(r[k] / r[ref] for r in cpu_rounds), max(r[k] / r[ref] for r in cpu_rounds)) for k in ratio}
    load = os.getloadavg()
    md = [
        "# Sampling speed: TwinFlow's any-step sampler vs the guided 50-step base",
        "",
        f"Generated by `python bench/sample_speed.py` ({what}; batch {args.batch}, {args.threads} torch "
        f"thread(s), {args.rounds} alternating rounds of >= {args.min_seconds:g} s per setting, {wall:.0f} s). "
        "Do not edit by hand.",
        "",
        f"Measured on a shared machine (load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"on {os.cpu_count()} cores at the end of the run): absolute images/s are lowered by other jobs; "
        "the ratios compare both sides inside the same round, and CPU time (one thread) is what the sampler "
        "itself cost.",
        "",
        f"| setting | network calls | images/s per CPU second | x {ref} (CPU time) | range over rounds "
        f"| images/s wall | x {ref} (wall) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in names:
        x = f"{ratio[k]:.1f}x" if k in ratio else "1x"
        xw = f"{wall_ratio[k]:.1f}x" if k in wall_ratio else "1x"
        rng = f"{spread[k][0]:.1f}x - {spread[k][1]:.1f}x" if k in spread else ""
        md.append(f"| {k} | {calls[k]} | {cpu_med[k]:.1f} | {x} | {rng} | {med[k]:.1f} | {xw} |")
    md += [
        "",
        f"1 NFE is **{ratio['1 NFE']:.0f}x** faster than the base at {args.steps} guided Euler steps "
        f"({calls[ref]} network calls) by CPU time ({wall_ratio['1 NFE']:.0f}x by wall clock); target >= 90x.",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md) + "\n")
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "what": what,
                "batch": args.batch,
                "threads": args.threads,
                "rounds_wall": rounds,
                "rounds_cpu": cpu_rounds,
                "median_images_per_s_wall": med,
                "median_images_per_cpu_s": cpu_med,
                "ratio_to_reference_cpu": ratio,
                "ratio_to_reference_wall": wall_ratio,
                "reference": ref,
                "seconds": wall,
                "loadavg": load,
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

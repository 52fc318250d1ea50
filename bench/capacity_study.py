"""Where one step needs scale: the in-house UNet at several widths, each with its own flow-matching base trained
the same number of steps and a TwinFlow fine-tune of the same budget and recipe, scored at 1, 2 and 4 NFE against
its own base at 50 guided Euler steps (the protocol of bench/finetune_curve.py, whose code this reuses).

    bench/capacity_study.sh                       # the study as committed (widths 4, 8, 32; see that script)
    python bench/capacity_study.py --widths 4,8 --base-steps 3000 --milestones 75,150,225,300 \
        --existing-base 32=artifacts/bases/shapes24-fm [--images-per-prompt 2] [--seeds 1,2] \
        [--out outputs/bench/capacity_study] [--threads 1] [--experiment shapes_cpu] [--set KEY=VALUE]
    python bench/capacity_study.py --out outputs/bench/capacity_study --summarize [--results bench/results]

Width w scales the default net (conf/model/unet_small.yaml, w = 32) as a whole: channels [w, 2w, 2w], caption
encoder width w (text_dim), time embedding 4w (time_dim); depth, patch, attention levels and out_skip stay.
w = 32 is the default net itself ("native": the experiment's own net, for bench/device_shapes_gpu.sh). Every
other setting is the recipe of --experiment: the pretrain section for the base (its step count set by
--base-steps; --existing-base reuses a base trained with that recipe), the train section for TwinFlow (steps = the
last milestone; its cosine reaches 0 there). Runs resume where they stopped (each run's folder), so the script
can be rerun after an interruption. Writes <out>/w<W>/{base,tf-s<seed>}/..., <out>/w<W>/base_scores.json;
--summarize writes capacity_study.json, capacity_study_table.md and capacity_study.png into --results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KEYS = ("geneval", "dpg", "fd")
EXPERIMENT = ["shapes_cpu"]  # --experiment


def model_overrides(width) -> list[str]:
    """The default net (w = 32) scaled by w/32 in every width it has; "native": the experiment's own net."""
    if width == "native":
        return []
    return [
        f"model.channels=[{width},{2 * width},{2 * width}]",
        f"model.text_dim={width}",
        f"model.time_dim={4 * width}",
    ]


def count_params(base_dir: Path) -> int:
    from twinflow_core.loader import load_generator

    return sum(p.numel() for p in load_generator(base_dir).net.parameters())


def train_base(out: Path, width, steps: int, threads: int, extra: list[str]) -> dict:
    from train_compare import ensure_dataset

    from twinflow_core.training.compose import compose
    from twinflow_core.training.run import fit

    done = out / "base" / "model.json"
    info_path = out / "base_training.json"
    if done.is_file() and info_path.is_file():
        return json.loads(info_path.read_text())
    s, data = compose([f"experiment={EXPERIMENT[0]}", *model_overrides(width), *extra, f"pretrain.steps={steps}"])
    ensure_dataset(data["data"])
    st = s.pretrain
    st.data, st.out, st.resume_dir = str(ROOT / data["data"]["path"]), str(out / "base"), str(out / "base-resume")
    st.threads, st.sample_every = threads, 0
    t0, c0 = time.perf_counter(), time.process_time()
    info = fit("pretrain", s)
    info = {
        **info,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }
    info_path.write_text(json.dumps(info, indent=1, default=str))
    return info


def run_width(args, width: int) -> None:
    import torch
    from finetune_curve import Resampler, base_units, score_variant, train_variant, with_errors

    from twinflow_core.benchmarks.evaluate import Evaluation
    from twinflow_core.benchmarks.protocol import EvalConfig

    if args.threads > 0:  # also for the scores of an existing base (no fit sets it): OpenMP threads that spin on
        torch.set_num_threads(args.threads)  # a loaded 2-core machine cost several times the CPU time
    out = Path(args.out) / f"w{width}"
    out.mkdir(parents=True, exist_ok=True)
    c0 = time.process_time()
    existing = dict(e.split("=", 1) for e in args.existing_base)
    if str(width) in existing:  # a base already trained with this recipe (its model.json records the steps)
        base_dir = Path(existing[str(width)])
        meta = json.loads((base_dir / "model.json").read_text())
        steps = meta["extra"]["config"]["pretrain"]["steps"]
        if steps != args.base_steps or (
            width != "native" and meta["net_kwargs"]["channels"] != [width, 2 * width, 2 * width]
        ):
            raise SystemExit(
                f"{base_dir}: {steps} steps, channels {meta['net_kwargs']['channels']}; the study "
                f"wants {args.base_steps} steps at width {width}"
            )
        binfo = {"steps": steps, "source": str(base_dir), "note": "existing base (its MODEL_CARD.md has its timing)"}
    else:
        base_dir = out / "base"
        binfo = train_base(out, width, args.base_steps, args.threads, args.overrides)
    cfg = EvalConfig(
        domain="shapes",
        geneval_max_prompts=args.eval_prompts,
        dpg_max_items=max(args.eval_prompts // 2, 8) if args.eval_prompts else 0,
        images_per_prompt=args.images_per_prompt,
        reference_max_prompts=0,
        base_cfg=[0.0, 0.5],
    )
    ev = Evaluation(cfg, "shapes", json.loads((base_dir / "model.json").read_text())["net_kwargs"]["image_size"])
    rs = Resampler(ev, cfg.images_per_prompt)
    base = base_units(ev, str(base_dir), out / "base_units.npz")
    (out / "base_scores.json").write_text(json.dumps({s: with_errors(rs, u, None) for s, u in base.items()}, indent=1))
    milestones = sorted(int(m) for m in args.milestones.split(","))
    for seed in (int(s) for s in args.seeds.split(",")):
        vout = out / f"tf-s{seed}"
        if (vout / "scores.json").is_file():
            continue
        overrides = [*model_overrides(width), *args.overrides, f"train.seed={seed}"]
        training = train_variant(str(base_dir), vout, milestones, overrides, args.threads)
        scores = score_variant(ev, rs, base, vout, milestones, overrides)
        scores.update(
            training={
                k: training.get(k) for k in ("steps", "seconds", "sec_per_step_median", "wall_seconds", "cpu_seconds")
            },
            width=width,
            seed=seed,
        )
        (vout / "scores.json").write_text(json.dumps(scores, indent=1, default=str))
    meta = {
        "width": width,
        "params": count_params(base_dir),
        "base_dir": str(base_dir),
        "base_training": {
            k: binfo.get(k) for k in ("steps", "seconds", "sec_per_step_median", "wall_seconds", "cpu_seconds")
        },
        "base_steps": args.base_steps,
        "images_per_prompt": args.images_per_prompt,
        "process_cpu_seconds_this_call": round(time.process_time() - c0, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(f"w{width}: done, {meta['process_cpu_seconds_this_call']} CPU s in this call", flush=True)


# ------------------------------------------------------------------------------------------- summary


def collect(out: Path) -> list[dict]:
    rows = []
    for wdir in sorted(out.glob("w*"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 10**6):
        if not (wdir / "meta.json").is_file():
            continue
        meta = json.loads((wdir / "meta.json").read_text())
        base = json.loads((wdir / "base_scores.json").read_text())
        runs = {}
        for sp in sorted(wdir.glob("tf-s*/scores.json")):
            runs[sp.parent.name] = json.loads(sp.read_text())
        rows.append({**meta, "base": base, "runs": runs})
    return rows


def seed_mean(runs: dict, step: str, nfe: int, key: str) -> tuple[float, float, int]:
    """Mean ratio over the seeds that reached `step`, and its SE: the mean of the bootstrap SEs over sqrt(n)
    combined with the spread between seeds (n >= 2)."""
    vals = [
        (r["steps"][step][f"{nfe}nfe"][f"{key}_ratio"], r["steps"][step][f"{nfe}nfe"][f"{key}_ratio_se"])
        for r in runs.values()
        if step in r["steps"]
    ]
    if not vals:
        return float("nan"), float("nan"), 0
    m = float(np.mean([v for v, _ in vals]))
    se_boot = float(np.sqrt(np.mean([s**2 for _, s in vals])) / np.sqrt(len(vals)))
    se_seed = float(np.std([v for v, _ in vals], ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
    return m, float(max(se_boot, se_seed)), len(vals)


def summarize(out: Path, results: Path, command: str) -> str:
    rows = collect(out)
    if not rows:
        raise SystemExit(f"{out}: no finished width yet")
    last = max(int(s) for r in rows for run in r["runs"].values() for s in run["steps"])
    table = {"command": command, "widths": []}
    lines = [
        "| width | params | base: geneval / dpg / FD at 50 steps cfg 0.5 | base s/step (CPU s/step) | TF s/step | seeds | "
        "1 NFE geneval / dpg / FD (x base) | 2 NFE | 4 NFE | 1 NFE absolute geneval / dpg / FD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["base"]["euler50-cfg0.5"]
        step = str(last)
        cells, entry = (
            [],
            {
                "width": r["width"],
                "params": r["params"],
                "base": b,
                "base_1nfe": r["base"].get("1nfe"),
                "base_training": r["base_training"],
                "ratios": {},
                "per_seed": {},
            },
        )
        for nfe in (1, 2, 4):
            parts = []
            for key in KEYS:
                m, se, n = seed_mean(r["runs"], step, nfe, key)
                entry["ratios"][f"{nfe}nfe/{key}"] = [m, se]
                parts.append(f"{m:.2f}±{se:.2f}")
            cells.append(" / ".join(parts))
        absolute = []
        entry["absolute"] = {}
        for nfe in (1, 2, 4):
            for key in KEYS:
                vals = [run["steps"][step][f"{nfe}nfe"][key] for run in r["runs"].values() if step in run["steps"]]
                entry["absolute"][f"{nfe}nfe/{key}"] = float(np.mean(vals)) if vals else float("nan")
                if nfe == 1:
                    absolute.append(f"{np.mean(vals):.3g}" if vals else "nan")
        for name, run in r["runs"].items():
            entry["per_seed"][name] = {"training": run.get("training"), "steps": run["steps"]}
        tf_sps = [run.get("training", {}).get("sec_per_step_median") for run in r["runs"].values()]
        tf_sps = [x for x in tf_sps if x]
        bt = r["base_training"]
        base_cpu = (bt.get("cpu_seconds") or 0) / max(bt.get("steps") or 1, 1)
        seeds = sum(step in run["steps"] for run in r["runs"].values())
        lines.append(
            f"| {r['width']} | {r['params'] / 1e6:.2f}M | {b['geneval']:.3f}±{b['geneval_se']:.3f} / "
            f"{b['dpg']:.1f}±{b['dpg_se']:.1f} / {b['fd']:.2f}±{b['fd_se']:.2f} | "
            f"{bt.get('sec_per_step_median') or float('nan'):.3f} ({base_cpu:.3f}) | "
            f"{(np.median(tf_sps) if tf_sps else float('nan')):.3f} | {seeds} | "
            + " | ".join(cells)
            + f" | {' / '.join(absolute)} |"
        )
        table["widths"].append(entry)
    # the compute curve: every milestone of every width (seed means)
    clines = [
        "| width | TF steps | seeds | 1 NFE geneval (x) | 1 NFE dpg (x) | 1 NFE FD (x) | 2 NFE geneval / dpg (x) | 4 NFE geneval / dpg (x) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, entry in zip(rows, table["widths"]):
        steps = sorted({int(s) for run in r["runs"].values() for s in run["steps"]})
        entry["milestones"] = {}
        for s in steps:
            vals = {f"{n}nfe/{k}": seed_mean(r["runs"], str(s), n, k) for n in (1, 2, 4) for k in KEYS}
            entry["milestones"][str(s)] = {k: v[:2] for k, v in vals.items()}
            f = lambda k: f"{vals[k][0]:.2f}±{vals[k][1]:.2f}"  # noqa: E731, B023 - called within the iteration
            clines.append(
                f"| {r['width']} | {s} | {vals['1nfe/geneval'][2]} | {f('1nfe/geneval')} | {f('1nfe/dpg')} | "
                f"{f('1nfe/fd')} | {f('2nfe/geneval')} / {f('2nfe/dpg')} | {f('4nfe/geneval')} / {f('4nfe/dpg')} |"
            )
    results.mkdir(parents=True, exist_ok=True)
    (results / "capacity_study.json").write_text(json.dumps(table, indent=1, default=str))
    plot(table, results)
    text = "\n".join(
        [
            f"At the last milestone ({last} TwinFlow steps); ratios to each width's own base at 50 Euler "
            "steps with guidance 0.5, paired bootstrap SE over prompts (seed means: SE from the bootstrap "
            "and the seed spread, the larger).",
            "",
            *lines,
            "",
            "Against fine-tuning compute (milestones):",
            "",
            *clines,
            "",
        ]
    )
    (results / "capacity_study_table.md").write_text(text)
    return text


def plot(table: dict, results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = table["widths"]
    params = [w["params"] / 1e6 for w in ws]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    # absolute scores: a ratio to a base that learned nothing (geneval ~0) says nothing, the scores themselves do
    for key, ax, scale in (("geneval", axes[0], 1.0), ("fd", axes[1], 1.0)):
        ax.errorbar(
            params,
            [w["base"][key] * scale for w in ws],
            yerr=[w["base"][f"{key}_se"] for w in ws],
            marker="*",
            color="k",
            label="base, 50 Euler steps, cfg 0.5",
            capsize=3,
        )
        for nfe, marker, color in ((1, "o", "C0"), (2, "s", "C1"), (4, "^", "C2")):
            ax.plot(
                params,
                [w["absolute"][f"{nfe}nfe/{key}"] for w in ws],
                marker=marker,
                color=color,
                label=f"TwinFlow {nfe} NFE",
            )
        ax.set_xscale("log")
        ax.set_xlabel("parameters (M)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("geneval-shapes overall")
    axes[0].set_title("geneval vs size (equal budget)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("Frechet distance (lower is better)")
    axes[1].set_title("FD vs size (equal budget)")
    widest = ws[-1]
    steps = sorted(int(s) for s in widest.get("milestones", {}))
    for key, color in (("geneval", "C0"), ("dpg", "C1"), ("fd", "C2")):
        m = [widest["milestones"][str(s)][f"1nfe/{key}"][0] for s in steps]
        se = [widest["milestones"][str(s)][f"1nfe/{key}"][1] for s in steps]
        axes[2].errorbar(steps, m, yerr=se, marker="o", color=color, label=f"1 NFE {key} (x base)", capsize=3)
    axes[2].set_xlabel(f"TwinFlow fine-tuning steps (width {widest['width']}, {widest['params'] / 1e6:.1f}M)")
    axes[2].set_title("ratio vs fine-tuning compute, widest net")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results / "capacity_study.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="4,8,32", help="comma-separated; 'native': the experiment's own net")
    ap.add_argument("--experiment", default="shapes_cpu", help="conf/experiment/<name>.yaml for both stages")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override for both stages (e.g. trainer=cpu for a smoke run of a GPU recipe)",
    )
    ap.add_argument("--base-steps", type=int, default=3000)
    ap.add_argument("--milestones", default="200,400", help="TwinFlow exports scored (the last is the budget)")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--eval-prompts", type=int, default=0, help="geneval-shapes prompts (0: all 132; dpg: half, 0: all 64)"
    )
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "capacity_study"))
    ap.add_argument(
        "--existing-base",
        action="append",
        default=[],
        metavar="WIDTH=DIR",
        help="use this base for WIDTH instead of training one (it must have --base-steps steps)",
    )
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--command", default="bench/capacity_study.sh", help="recorded in the summary")
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(Path(args.out), Path(args.results), args.command))
        return 0
    import finetune_curve
    import torch

    EXPERIMENT[0] = finetune_curve.EXPERIMENT = args.experiment
    finetune_curve.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # sampling for the scores
    c0, t0 = time.process_time(), time.perf_counter()
    for w in (x if x == "native" else int(x) for x in args.widths.split(",")):
        run_width(args, w)
    print(
        f"capacity_study: widths {args.widths} seeds {args.seeds}: {time.process_time() - c0:.0f} CPU s, "
        f"{time.perf_counter() - t0:.0f} s wall",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Few-step methods at equal compute on images: every method of the objective registry (fm, rcgm, twinflow,
meanflow, ...) fine-tuned from one flow-matching base per dataset for the same CPU-seconds budget, scored at 1, 2
and 4 NFE with each dataset's own metric, with the step cost and peak memory of each method.

    python bench/method_table_images.py --domain shapes --base artifacts/bases/shapes24-fm --budget-cpu-s 90 \
        --out outputs/bench/method_table/shapes
    python bench/method_table_images.py --domain digits --width 16 --base-steps 1000 --budget-cpu-s 90 \
        --out outputs/bench/method_table/digits
    python bench/method_table_images.py --summarize outputs/bench/method_table/shapes,outputs/bench/method_table/digits \
        --results bench/results/method_table_images.md
    bench/method_table_images.sh      # both datasets side by side, then the summary (what the committed table ran)

Base: `--base DIR` reuses a committed flow-matching base (shapes: artifacts/bases/shapes24-fm, the default net at
24 px, 3000 steps); otherwise one is pretrained once with the experiment's pretrain recipe (`--base-steps`, the
net scaled to `--width` as in bench/capacity_study.py) into <out>/base and reused by every method and later call.

Equal compute = the same CPU seconds of optimiser steps. Each method's cost per step is measured first in a fresh
process (`--probe-steps` steps after a warm-up, the median of time.process_time() per step, one thread, the
method's conf/objective/<name>.yaml, the base's net and the recipe's batch); its fine-tune then gets
steps = budget / (CPU s per step), with the recipe's schedule (cosine to 0) over its own steps. Process CPU time,
not wall time, because the machine is shared (on an idle core with one thread the two agree); and not an equal
number of network evaluations, because the methods differ in what a step costs beyond its forward passes (a
JVP, a second target pass, the adversarial bucket), and that difference is what a user pays. The CPU time of each
whole fine-tune (data loading, EMA, export included) is recorded beside it, so the budget's accuracy is visible.
The same probe gives the memory: growth of the peak RSS (VmHWM) over the steps above the set-up (weights, EMA,
optimiser, batch), and the peak RSS itself.

Scores: each export at 1, 2 and 4 NFE with the method's registered sampler (fm: plain Euler without guidance;
the others bake guidance in, enhanced_ratio 0.5); the base at 1/2/4 Euler steps and at 50 with guidance 0.5 (the
reference of the ratios) and 0. shapes: geneval-shapes, dpg-shapes and FD in evaluator features on all 132 / 64
prompts (`--eval-prompts 0`), `--images-per-prompt` images each; digits: classifier accuracy and FD on
`--digits-per-class` images per class. Standard errors: a bootstrap over prompts (shapes: within geneval tags and
dpg items, bench/finetune_curve.py's Resampler; digits: images within their class), the same resamples for every
model, so ratios to the base carry their paired error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

EXPERIMENTS = {"shapes": "shapes_cpu", "digits": "digits_cpu"}
KEYS = {"shapes": ("geneval", "dpg", "fd"), "digits": ("accuracy", "fd")}
BOOTSTRAP = 200
BASE_SETTINGS = (("euler1", 1, 0.0), ("euler2", 2, 0.0), ("euler4", 4, 0.0), ("euler50", 50, 0.0))
REFERENCE = ("euler50-cfg0.5", 50, 0.5)


def model_overrides(width: int | None) -> list[str]:
    from capacity_study import model_overrides as scaled

    return [] if width is None else scaled(width)


def steps_for_budget(budget_cpu_s: float, cpu_per_step: float, minimum: int = 10) -> int:
    """The optimiser steps a method gets for the budget: budget over its measured CPU seconds per step."""
    if budget_cpu_s <= 0:
        raise ValueError(f"budget must be positive, got {budget_cpu_s}")
    if not cpu_per_step > 0:
        raise ValueError(f"CPU seconds per step must be positive, got {cpu_per_step}")
    return max(minimum, int(round(budget_cpu_s / cpu_per_step)))


# ------------------------------------------------------------------------------------------- step cost probe

PROBE = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
def hwm_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
torch.set_num_threads(1)
from twinflow_core import objectives
from twinflow_core.checkpoint import load_generator
from twinflow_core.ema import EMA
from twinflow_core.training.compose import compose
overrides, base, steps = json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s, _ = compose(overrides)
torch.manual_seed(0)
gen = load_generator(base)
net = gen.net.train()
obj = objectives.build_objective(s.objective.train.build("objective.train"))
ema = EMA(net, s.train.ema_decay)
opt = torch.optim.AdamW(net.parameters(), s.train.lr)
B, S, C = s.train.batch_size, gen.image_size, int(gen.meta["image"]["channels"])
x = torch.randn(B, C, S, S)
words = gen.tokenizer.vocabulary
caps = [" ".join(words[(i + j) % len(words)] for j in range(min(4, gen.tokenizer.max_len))) for i in range(B)]
ids, un = gen.tokenizer.encode(caps), gen.tokenizer.null(B)
def step():
    loss, _ = obj(net, x, ids, uncond=un, ema=ema); opt.zero_grad(); loss.backward(); opt.step(); ema.update(net)
step()
base_rss = hwm_kb()
cpus = []
for _ in range(steps):
    c0 = time.process_time(); step(); cpus.append(time.process_time() - c0)
cpus.sort()
print(json.dumps({"cpu_sec_per_step": cpus[len(cpus) // 2], "cpu_sec_per_step_all": [round(c, 4) for c in cpus],
                  "step_rss_mb": (hwm_kb() - base_rss) / 1024, "peak_rss_mb": hwm_kb() / 1024,
                  "params": sum(p.numel() for p in net.parameters()), "batch": B, "image_size": S}))
"""


def probe(overrides: list[str], base_dir: Path, steps: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT), json.dumps(overrides), str(base_dir), str(steps)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if proc.returncode:
        raise RuntimeError(f"step-cost probe {overrides}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- scoring


class DigitsUnits:
    """Per-image correctness and features of a digits set; bootstrap resamples images within their class."""

    def __init__(self, ev, n: int = BOOTSTRAP, seed: int = 0):
        from twinflow_core.benchmarks.features import frechet_distance

        self.ev, self.fd, self.real = ev, frechet_distance, ev.real_a_feats
        labels = np.asarray(ev.ps.labels)
        self.labels = labels
        classes = [np.flatnonzero(labels == d) for d in range(10)]
        rng = np.random.default_rng(seed)
        self.samples = [np.concatenate([rng.choice(ix, len(ix)) for ix in classes]) for _ in range(n)]

    def units(self, images: np.ndarray) -> dict:
        pred = self.ev.ev.classifier.predict_logits(images).argmax(1)
        return {"correct": (pred == self.labels).astype(float), "feats": self.ev.ev.features.embed(images)}

    def point(self, u: dict, rows=None) -> dict:
        rows = np.arange(len(self.labels)) if rows is None else rows
        return {"accuracy": float(u["correct"][rows].mean()), "fd": float(self.fd(u["feats"][rows], self.real[rows]))}

    def draws(self, u: dict) -> list[dict]:
        return [self.point(u, r) for r in self.samples]


class ShapesUnits:
    """geneval-shapes / dpg-shapes / FD units (bench/finetune_curve.py) and its paired bootstrap."""

    def __init__(self, ev, k: int):
        from finetune_curve import Resampler

        self.ev, self.rs = ev, Resampler(ev, k, n=BOOTSTRAP)

    def units(self, images: np.ndarray) -> dict:
        from finetune_curve import unit_scores

        return unit_scores(self.ev, images)

    def point(self, u: dict) -> dict:
        return self.rs.point(u)

    def draws(self, u: dict) -> list[dict]:
        return self.rs.draws(u)


def with_errors(scorer, keys, u: dict, ref: dict | None) -> dict:
    """Point scores, bootstrap SEs and (given the reference's units) paired ratios and their SEs."""
    pt, dr = scorer.point(u), scorer.draws(u)
    out = {k: pt[k] for k in keys}
    out.update({f"{k}_se": float(np.std([d[k] for d in dr if k in d])) for k in keys})
    if ref is not None:
        rpt, rdr = scorer.point(ref), scorer.draws(ref)
        for k in keys:
            pairs = [(d[k], b[k]) for d, b in zip(dr, rdr) if k in d and k in b]
            out[f"{k}_ratio"] = pt[k] / rpt[k] if rpt[k] else float("nan")
            out[f"{k}_ratio_se"] = float(np.std([a / b if b else np.nan for a, b in pairs]))
    return out


@contextlib.contextmanager
def sampler_gaps(gaps):
    """The method's registered gaps for the any-step sampler (Generator.generate passes only the style)."""
    import functools

    import twinflow_core.sampler as sampler

    orig = sampler.sample
    if gaps is not None:
        sampler.sample = functools.partial(orig, gaps=tuple(gaps))
    try:
        yield
    finally:
        sampler.sample = orig


def images_for(ev, gen, nfe: int, style: str, cfg: float = 0.0, gaps=None) -> np.ndarray:
    from twinflow_core.benchmarks.evaluate import generate_set
    from twinflow_core.benchmarks.protocol import Setting

    with sampler_gaps(gaps):
        return generate_set(gen, ev.ps.captions, Setting(f"{nfe}", nfe, style, cfg), ev.cfg.seed, ev.cfg.batch)[0]


# ------------------------------------------------------------------------------------------- the run


def train_base(args, out: Path) -> tuple[Path, dict]:
    from train_compare import ensure_dataset

    from twinflow_core.training.compose import compose
    from twinflow_core.training.run import fit

    base_dir = out / "base"
    info_path = out / "base_training.json"
    if (base_dir / "model.json").is_file() and info_path.is_file():
        return base_dir, json.loads(info_path.read_text())
    s, data = compose(
        [f"experiment={EXPERIMENTS[args.domain]}", *model_overrides(args.width), f"pretrain.steps={args.base_steps}"]
    )
    ensure_dataset(data["data"])
    st = s.pretrain
    st.data, st.out, st.resume_dir = str(ROOT / data["data"]["path"]), str(base_dir), str(out / "base-resume")
    st.threads, st.sample_every = 1, 0
    t0, c0 = time.perf_counter(), time.process_time()
    info = fit("pretrain", s)
    info = {**info, "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    info_path.write_text(json.dumps(info, indent=1, default=str))
    return base_dir, info


def run(args) -> dict:
    import finetune_curve
    import torch

    from twinflow_core import objectives
    from twinflow_core.benchmarks.evaluate import Evaluation
    from twinflow_core.benchmarks.protocol import EvalConfig
    from twinflow_core.checkpoint import load_generator

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c_start, t_start = time.process_time(), time.perf_counter()
    if args.base:
        base_dir, binfo = (
            Path(args.base),
            {"source": args.base, "note": "existing base (its MODEL_CARD.md has its timing)"},
        )
        args.width = None  # the base's own net
    else:
        base_dir, binfo = train_base(args, out)
    methods = args.methods.split(",") if args.methods else list(objectives.names())
    common = [f"experiment={EXPERIMENTS[args.domain]}", *model_overrides(args.width)]
    keys = KEYS[args.domain]
    size = json.loads((base_dir / "model.json").read_text())["net_kwargs"]["image_size"]
    if args.domain == "shapes":
        cfg = EvalConfig(
            domain="shapes",
            geneval_max_prompts=args.eval_prompts,
            dpg_max_items=max(args.eval_prompts // 2, 8) if args.eval_prompts else 0,
            images_per_prompt=args.images_per_prompt,
            reference_max_prompts=0,
        )
        ev = Evaluation(cfg, "shapes", size, progress=lambda *_: None)
        scorer = ShapesUnits(ev, cfg.images_per_prompt)
    else:
        cfg = EvalConfig(domain="digits", digits_per_class=args.digits_per_class, reference_max_prompts=0)
        ev = Evaluation(cfg, "digits", size, progress=lambda *_: None)
        scorer = DigitsUnits(ev)
    res_path = out / "result.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}
    res.update(
        domain=args.domain,
        base_dir=str(base_dir),
        base_training={k: binfo.get(k) for k in ("steps", "wall_seconds", "cpu_seconds", "source", "note")},
        budget_cpu_s=args.budget_cpu_s,
        eval={
            "images_per_prompt": args.images_per_prompt,
            "eval_prompts": args.eval_prompts,
            "digits_per_class": args.digits_per_class,
            "n_images": len(ev.ps.captions),
        },
    )
    res.setdefault("methods", {})
    # the base: its reference (50 guided Euler steps) first, every ratio is to it
    base = load_generator(base_dir)
    units_path = out / "base_units.npz"
    names = [REFERENCE, *BASE_SETTINGS]
    if units_path.is_file():
        z = np.load(units_path)
        bunits = {n: {f.split("/", 1)[1]: z[f] for f in z.files if f.startswith(n + "/")} for n, _, _ in names}
    else:
        bunits = {n: scorer.units(images_for(ev, base, nfe, "euler", w)) for n, nfe, w in names}
        np.savez(units_path, **{f"{n}/{f}": v for n, u in bunits.items() for f, v in u.items()})
    ref = bunits[REFERENCE[0]]
    res["base"] = {n: with_errors(scorer, keys, bunits[n], ref) for n, _, _ in names}
    res["base"]["params"] = sum(p.numel() for p in base.net.parameters())
    res_path.write_text(json.dumps(res, indent=1, default=str))
    print(f"{args.domain}: base scored ({time.process_time() - c_start:.0f} CPU s so far)", flush=True)
    for m in methods:
        if m in res["methods"] and "nfe" in res["methods"][m]:
            continue
        ov = [*common, f"objective={m}", *args.overrides]
        cost = probe(ov, base_dir, args.probe_steps)
        steps = steps_for_budget(args.budget_cpu_s, cost["cpu_sec_per_step"])
        vout = out / m
        finetune_curve.EXPERIMENT = EXPERIMENTS[args.domain]
        training = finetune_curve.train_variant(str(base_dir), vout, [steps], ov[1:], 1)
        gen = load_generator(vout / f"step-{steps:05d}")
        sampler = dict(objectives.get(m).sampler)
        style, gaps = sampler.get("style", "few"), sampler.get("gaps")
        res["methods"][m] = {
            "cost": cost,
            "steps": steps,
            "sampler": {"style": style, "gaps": gaps},
            "training_cpu_s": training.get("cpu_seconds"),
            "training_wall_s": training.get("wall_seconds"),
            "training_sec_per_step_median": training.get("sec_per_step_median"),
            "nfe": {
                str(n): with_errors(scorer, keys, scorer.units(images_for(ev, gen, n, style, 0.0, gaps)), ref)
                for n in (1, 2, 4)
            },
        }
        res_path.write_text(json.dumps(res, indent=1, default=str))
        print(
            f"{args.domain} {m}: {steps} steps ({cost['cpu_sec_per_step']:.3f} CPU s/step probed, fine-tune "
            f"{training.get('cpu_seconds')} CPU s); 1 NFE "
            + ", ".join(f"{k} {res['methods'][m]['nfe']['1'][k]:.3g}" for k in keys),
            flush=True,
        )
    children = os.times()
    res["cpu_seconds_this_call"] = time.process_time() - c_start + children.children_user + children.children_system
    res["wall_seconds_this_call"] = time.perf_counter() - t_start
    res_path.write_text(json.dumps(res, indent=1, default=str))
    return res


# ------------------------------------------------------------------------------------------- summary


def cell(row: dict, k: str, ratio: bool = False) -> str:
    if ratio:
        return f"{row[f'{k}_ratio']:.2f}±{row[f'{k}_ratio_se']:.2f}"
    fmt = ".1f" if k in ("fd", "dpg") else ".3f"
    return f"{row[k]:{fmt}}±{row[f'{k}_se']:{fmt}}"


def summarize(dirs: list[Path], results: Path, command: str) -> str:
    table = {"command": command, "date": time.strftime("%Y-%m-%d"), "datasets": {}}
    lines = [
        "# Few-step methods at equal compute on images (digits, shapes), from one base per dataset",
        "",
        f"Command: `{command}`. Generated by `bench/method_table_images.py` (its docstring is the protocol), "
        f"{table['date']}.",
        "",
    ]
    for d in dirs:
        res = json.loads((d / "result.json").read_text())
        table["datasets"][res["domain"]] = res
        keys = KEYS[res["domain"]]
        bt = res["base_training"]
        metric = "geneval-shapes / dpg-shapes / FD" if res["domain"] == "shapes" else "accuracy / FD"
        ref = res["base"][REFERENCE[0]]
        lines += [
            f"## {res['domain']}",
            "",
            f"Base: {res['base']['params']:,} parameters, "
            + (
                f"{bt.get('source')} (committed)"
                if bt.get("source")
                else f"pretrained here, {bt.get('steps')} steps, {bt.get('cpu_seconds', 0):.0f} CPU s"
            )
            + f". Budget {res['budget_cpu_s']:g} CPU s of fine-tuning per method; {res['eval']['n_images']} "
            f"images per setting; this dataset's run took {res.get('cpu_seconds_this_call', float('nan')):.0f} "
            f"CPU s ({res.get('wall_seconds_this_call', float('nan')):.0f} s wall) in its last call.",
            "",
            f"Scores: {metric}, ± bootstrap SE over prompts. Ratio: 1-NFE score over the base's at 50 Euler steps "
            f"with guidance 0.5 (paired SE; for FD lower is better, so a ratio > 1 is worse than the base).",
            "",
            f"| model | steps in budget | probed CPU s/step | fine-tune CPU s | step memory MB (peak RSS MB) | "
            f"1 NFE {metric} | 2 NFE | 4 NFE | 1 NFE / base@50 cfg 0.5 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        b = res["base"]
        lines.append(
            f"| base, Euler 50 cfg 0.5 (reference) | {bt.get('steps') or ''} | | | | "
            + " / ".join(cell(ref, k) for k in keys)
            + " | | | |"
        )
        lines.append("| base, Euler 50 | | | | | " + " / ".join(cell(b["euler50"], k) for k in keys) + " | | | |")
        lines.append(
            "| base, Euler (no fine-tune) | | | | | "
            + " | ".join(" / ".join(cell(b[f"euler{n}"], k) for k in keys) for n in (1, 2, 4))
            + " | "
            + " / ".join(cell(b["euler1"], k, True) for k in keys)
            + " |"
        )
        for m, r in res["methods"].items():
            c = r["cost"]
            lines.append(
                f"| {m} ({r['sampler']['style']}) | {r['steps']} | {c['cpu_sec_per_step']:.3f} | "
                f"{r['training_cpu_s']:.0f} | {c['step_rss_mb']:.0f} ({c['peak_rss_mb']:.0f}) | "
                + " | ".join(" / ".join(cell(r["nfe"][str(n)], k) for k in keys) for n in (1, 2, 4))
                + " | "
                + " / ".join(cell(r["nfe"]["1"], k, True) for k in keys)
                + " |"
            )
        lines.append("")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(table, indent=1, default=str))
    text = "\n".join(lines) + "\n"
    results.write_text(text)
    return text


def sample_grid(dirs: list[Path], path: Path, n: int = 8) -> None:
    """One figure per run: a row per model (the base at 50 guided steps and at 1 Euler step, every method at 1
    NFE with its own sampler), the same n prompts and noise in every row (the evaluation's first prompts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twinflow_core import objectives
    from twinflow_core.checkpoint import load_generator

    panels = []
    for d in dirs:
        res = json.loads((d / "result.json").read_text())
        if res["domain"] == "digits":
            captions = [__import__("twinflow_core.data.digits", fromlist=["caption"]).caption(i % 10) for i in range(n)]
        else:
            from twinflow_core.benchmarks.protocol import EvalConfig, shapes_prompt_set

            ps = shapes_prompt_set(EvalConfig(domain="shapes", images_per_prompt=1, geneval_max_prompts=0))[0]
            captions = list(dict.fromkeys(ps.captions))[:: max(len(set(ps.captions)) // n, 1)][:n]
        base = load_generator(res["base_dir"])
        rows = [
            ("base, 50 Euler cfg 0.5", base.generate(captions, 50, 0, "euler", 0.5)),
            ("base, 1 Euler step", base.generate(captions, 1, 0, "euler")),
        ]
        for m, r in res["methods"].items():
            gen = load_generator(d / m / f"step-{r['steps']:05d}")
            gaps = objectives.get(m).sampler.get("gaps")
            with sampler_gaps(gaps):
                rows.append((f"{m}, 1 NFE", gen.generate(captions, 1, 0, r["sampler"]["style"])))
        panels.append((res["domain"], captions, rows))
    height = sum(len(rows) for _, _, rows in panels)
    fig, axes = plt.subplots(height, n, figsize=(1.3 * n + 1.6, 1.35 * height), squeeze=False)
    i = 0
    for domain, captions, rows in panels:
        for label, images in rows:
            for j in range(n):
                ax = axes[i, j]
                ax.imshow(images[j], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"{domain}\n{label}", fontsize=7, rotation=0, ha="right", va="center")
                if label.startswith("base, 50"):
                    ax.set_title(captions[j][:28], fontsize=5)
            i += 1
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", choices=tuple(EXPERIMENTS), default="shapes")
    ap.add_argument("--base", help="an existing flow-matching base folder (else one is pretrained into <out>/base)")
    ap.add_argument("--width", type=int, default=None, help="net width for a pretrained base (default: the recipe's)")
    ap.add_argument("--base-steps", type=int, default=1000)
    ap.add_argument("--methods", default=None, help="comma-separated; default: every registered method")
    ap.add_argument("--budget-cpu-s", type=float, default=90.0, help="CPU seconds of fine-tuning per method")
    ap.add_argument("--probe-steps", type=int, default=5)
    ap.add_argument("--eval-prompts", type=int, default=0, help="shapes: geneval prompts (0: all 132)")
    ap.add_argument("--images-per-prompt", type=int, default=2)
    ap.add_argument("--digits-per-class", type=int, default=50)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "method_table"))
    ap.add_argument("--summarize", default=None, metavar="DIRS", help="comma-separated run folders: write the table")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "method_table_images.md"))
    ap.add_argument("--grid", action="store_true", help="with --summarize: also a 1-NFE sample grid (<results>.png)")
    ap.add_argument("--command", default="bench/method_table_images.sh", help="recorded in the summary")
    args = ap.parse_args(argv)
    if args.budget_cpu_s <= 0:
        ap.error(f"--budget-cpu-s must be positive, got {args.budget_cpu_s}")
    if args.probe_steps < 1:
        ap.error(f"--probe-steps must be >= 1, got {args.probe_steps}")
    if args.summarize:
        dirs = [Path(p) for p in args.summarize.split(",")]
        print(summarize(dirs, Path(args.results), args.command))
        if args.grid:
            sample_grid(dirs, Path(args.results).with_suffix(".png"))
        return 0
    if args.base and not (Path(args.base) / "model.json").is_file():
        ap.error(f"--base {args.base}: no model.json there")
    from twinflow_core import objectives

    unknown = [m for m in (args.methods or "").split(",") if m and m not in objectives.names()]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; registered: {', '.join(objectives.names())}")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

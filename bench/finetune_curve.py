"""How 1-NFE quality grows with the TwinFlow fine-tuning budget and recipe: runs that export the generator at
milestones, each scored against the base on the same prompts, with bootstrap standard errors.

    python bench/finetune_curve.py --base outputs/bench/train_compare/shapes/base --milestones 250,500,1000,1500 \
        [--out outputs/bench/finetune_curve] [--set train.lr=1e-3 ...] [--threads 1] [--eval-prompts 36]
    # a recipe study: one run per --variant (NAME=override;override;...), in order, in one process
    python bench/finetune_curve.py --base artifacts/bases/shapes24-fm --milestones 150,300 --eval-prompts 0 \
        --variant default= --variant lr1e-4='train.lr=0.0001' --out outputs/bench/recipe_study
    python bench/finetune_curve.py --out outputs/bench/recipe_study --summarize   # the table over all variants

Fine-tunes the flow-matching base `--base` with the recipe in conf/ (train section, objective=twinflow unless
overridden by --set / the variant's overrides, Hydra syntax) for max(milestones) steps, exporting the generator
(EMA weights, the same export the train stage writes) at each milestone, then scores each export at 1, 2, 4 NFE
and the base at 50 Euler steps with guidance 0 and 0.5 and at 1 Euler step on the embedded benchmarks
(`--eval-prompts 0`: all 132 geneval-shapes prompts and 64 dpg-shapes items, 4 images each).

Standard errors: a bootstrap over prompts (geneval-shapes prompts resampled within their tag, dpg-shapes items,
the FD's images with their prompts), with the same resampled indices for every model (fixed seed), so that a
ratio to the base carries the paired error of the two. The base's per-prompt scores are cached in
<out>/base_units.npz (keyed by the base folder and prompt set), so parallel or later variant runs share them.
Writes <out>/<variant>/scores.json (and results.json, results.md); <out>/summary.md over all variants.
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

BOOTSTRAP = 400
EXPERIMENT = "shapes_cpu"  # the recipe train_variant composes (bench/capacity_study.py --experiment sets another)
DEVICE = "cpu"  # where the generators sample (bench/capacity_study.py sets "cuda" on a GPU machine)
KEYS = ("geneval", "dpg", "fd")
BASE_SETTINGS = ("euler50-cfg0.5", "1nfe")  # + "euler50" (no guidance) with --base-cfg0, for enhanced_ratio 0


def milestone_exporter(out: Path, milestones: list[int]):
    import lightning as L

    from twinflow_core.training.callbacks import ExportGenerator

    class ExportAtMilestones(L.Callback):
        """Reuses the run's own ExportGenerator (same weights, same metadata) with another output folder."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step in milestones and not (out / f"step-{step:05d}" / "model.json").is_file():
                main = next(c for c in trainer.callbacks if isinstance(c, ExportGenerator))
                ExportGenerator(
                    out / f"step-{step:05d}", main.net_name, main.net_kwargs, main.tokenizer, main.extra
                ).on_train_end(trainer, pl_module)

    return ExportAtMilestones()


# ------------------------------------------------------------------------------------------- unit scores


def unit_scores(ev, images: np.ndarray) -> dict:
    """Per-image geneval correctness, per-item dpg scores and the image features of one generated set: what the
    overall scores are means of (the same numbers Evaluation.score reports), kept for the bootstrap."""
    from twinflow_core.benchmarks.evaluate import score_dpg_shapes, score_geneval_shapes

    ps = ev.ps
    g = ps.n_geneval
    _, rows = score_geneval_shapes(images[:g], ps.geneval_meta, ev.ev.detector)
    dpg = score_dpg_shapes(images[g:], ps.dpg_items, ev.questions, ev.ev.detector)["official"]["items"]
    return {
        "correct": np.array([r["correct"] for r in rows], dtype=float),
        "dpg": np.array([dpg.get(it, np.nan) for it in dict.fromkeys(ps.dpg_items)], dtype=float),
        "feats": ev.ev.features.embed(images),
    }


class Resampler:
    """Fixed bootstrap resamples of the prompt set: geneval prompts within each tag, dpg items, and the image
    rows (geneval + dpg) that the FD of a resample uses."""

    def __init__(self, ev, k: int, n: int = BOOTSTRAP, seed: int = 0):
        from twinflow_core.benchmarks.features import frechet_distance

        self.fd = frechet_distance
        ps = ev.ps
        self.k, self.n_gen, self.real = k, ps.n_geneval, ev.real_a_feats
        tags = [m["tag"] for m in ps.geneval_meta[::k]]
        self.tags = {t: np.array([i for i, x in enumerate(tags) if x == t]) for t in dict.fromkeys(tags)}
        n_items = len(dict.fromkeys(ps.dpg_items))
        rng = np.random.default_rng(seed)
        self.samples = []
        for _ in range(n):
            gp = {t: rng.choice(ix, len(ix)) for t, ix in self.tags.items()}
            items = rng.integers(0, n_items, n_items)
            self.samples.append((gp, items))
        self.n_items = n_items

    def point(self, u: dict, gp=None, items=None, fd: bool = True) -> dict:
        per_prompt = u["correct"].reshape(-1, self.k).mean(1)
        gp = gp or self.tags
        gen = float(np.mean([per_prompt[ix].mean() for ix in gp.values()]))
        items = np.arange(self.n_items) if items is None else items
        d = u["dpg"][items]
        out = {"geneval": gen, "dpg": float(100 * np.nanmean(d))}
        if fd:
            rows = [p * self.k + j for ix in gp.values() for p in ix for j in range(self.k)]
            rows += [self.n_gen + i * self.k + j for i in items for j in range(self.k)]
            out["fd"] = self.fd(u["feats"][rows], self.real[rows])
        return out

    def draws(self, u: dict, fd_draws: int = 100) -> list[dict]:
        return [self.point(u, gp, it, fd=b < fd_draws) for b, (gp, it) in enumerate(self.samples)]


def with_errors(rs: Resampler, u: dict, base: dict | None) -> dict:
    """Point scores, their bootstrap SEs and (given the base's units) the paired ratios to the base and their SEs."""
    pt, dr = rs.point(u), rs.draws(u)
    out = {k: pt[k] for k in KEYS}
    out.update({f"{k}_se": float(np.std([d[k] for d in dr if k in d])) for k in KEYS})
    if base is not None:
        bpt, bdr = rs.point(base), rs.draws(base)
        for k in KEYS:
            pairs = [(d[k], b[k]) for d, b in zip(dr, bdr) if k in d]
            out[f"{k}_ratio"] = pt[k] / bpt[k] if bpt[k] else float("nan")
            out[f"{k}_ratio_se"] = float(np.std([a / b if b else np.nan for a, b in pairs]))
    return out


def generate(ev, gen, setting) -> np.ndarray:
    from twinflow_core.benchmarks.evaluate import generate_set

    return generate_set(gen, ev.ps.captions, setting, ev.cfg.seed, ev.cfg.batch, setting.label)[0]


def base_units(ev, base_dir: str, cache: Path, names=BASE_SETTINGS) -> dict[str, dict]:
    from twinflow_core.benchmarks.protocol import Setting
    from twinflow_core.loader import load_generator

    key = f"{Path(base_dir).resolve()}|{len(ev.ps.captions)}|{ev.cfg.images_per_prompt}|{ev.cfg.seed}|{','.join(names)}"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            return {s: {f: z[f"{s}/{f}"] for f in ("correct", "dpg", "feats")} for s in names}
    base = load_generator(base_dir, DEVICE)
    settings = {
        "euler50-cfg0.5": Setting("euler50-cfg0.5", 50, "euler", 0.5),
        "euler50": Setting("euler50", 50, "euler"),
        "1nfe": Setting("1nfe", 1, "euler"),
    }
    units = {s: unit_scores(ev, generate(ev, base, settings[s])) for s in names}
    flat = {f"{s}/{f}": v for s, u in units.items() for f, v in u.items()}
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, key=np.array(key), **flat)
    tmp.replace(cache)
    return units


# ------------------------------------------------------------------------------------------- runs


def train_variant(base_dir: str, out: Path, milestones: list[int], overrides: list[str], threads: int) -> dict:
    from train_compare import ensure_dataset  # the sibling bench's: prepares the recipe's dataset if missing

    from twinflow_core.training.compose import compose
    from twinflow_core.training.run import fit

    s, data = compose([f"experiment={EXPERIMENT}", *overrides])
    ensure_dataset(data["data"])
    st = s.train
    st.data, st.init, st.out = str(ROOT / data["data"]["path"]), base_dir, str(out / "final")
    st.steps, st.resume_dir, st.threads, st.sample_every = milestones[-1], str(out / "resume"), threads, 0
    t0, c0 = time.perf_counter(), time.process_time()
    info = fit("train", s, callbacks=[milestone_exporter(out, milestones)])
    recipe = {
        "lr": st.lr,
        "batch_size": st.batch_size,
        "ema_decay": st.ema_decay,
        "cond_drop": st.cond_drop,
        "objective": s.objective.train.build("objective.train").to_dict(),
    }
    return {
        **info,
        "recipe": recipe,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }


def score_variant(ev, rs: Resampler, base: dict, out: Path, milestones: list[int], overrides: list[str]) -> dict:
    from twinflow_core.benchmarks.protocol import Setting
    from twinflow_core.loader import load_generator

    # the matching guidance of the reference: what the fine-tuning target bakes in (enhanced_ratio)
    # (no guidance for enhanced_ratio 0; cfg 0.5 otherwise, the pipeline's reference)
    meta = json.loads((out / f"step-{milestones[0]:05d}" / "model.json").read_text())
    unguided = float(meta.get("extra", {}).get("objective", {}).get("enhanced_ratio", 0.5)) == 0.0
    ref = "euler50" if unguided and "euler50" in base else "euler50-cfg0.5"
    scores: dict = {"reference": ref, "overrides": overrides, "steps": {}}
    for m in milestones:
        gen = load_generator(out / f"step-{m:05d}", DEVICE)
        scores["steps"][str(m)] = {
            f"{n}nfe": with_errors(rs, unit_scores(ev, generate(ev, gen, Setting(f"{n}nfe", n, "few"))), base[ref])
            for n in (1, 2, 4)
        }
    return scores


def fmt(row: dict, key: str, ratio: bool) -> str:
    if ratio:
        return f"{row[f'{key}_ratio']:.2f}±{row[f'{key}_ratio_se']:.2f}"
    return f"{row[key]:.3g}±{row[f'{key}_se']:.2g}"


def summarize(out: Path) -> str:
    """One table over every <out>/<variant>/scores.json: per milestone, 1/2/4 NFE as ratios to the base's
    many-step score at matching guidance (± bootstrap SE), and the absolute 1-NFE figures."""
    base = json.loads((out / "base_scores.json").read_text())
    lines = [
        "| variant | steps | s/step | 1 NFE geneval / dpg / FD (x base) | 2 NFE | 4 NFE | 1 NFE absolute |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted([*out.glob("scores.json"), *out.glob("*/scores.json")], key=lambda p: p.stat().st_mtime):
        sc = json.loads(path.read_text())
        sps = sc.get("sec_per_step_median")
        for step, by in sc["steps"].items():
            cells = [" / ".join(fmt(by[f"{n}nfe"], k, True) for k in KEYS) for n in (1, 2, 4)]
            absolute = " / ".join(fmt(by["1nfe"], k, False) for k in KEYS)
            lines.append(f"| {path.parent.name} | {step} | {sps} | " + " | ".join(cells) + f" | {absolute} |")
    head = [
        "base (same prompts): "
        + "; ".join(
            f"{s}: geneval {b['geneval']:.3f}±{b['geneval_se']:.3f}, dpg {b['dpg']:.1f}±{b['dpg_se']:.1f}, "
            f"FD {b['fd']:.2f}±{b['fd_se']:.2f}"
            for s, b in base.items()
        ),
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def parse_variants(raw: list[str], common: list[str]) -> list[tuple[str, list[str]]]:
    if not raw:
        return [("", common)]
    out = []
    for v in raw:
        name, _, spec = v.partition("=")
        if not name:
            raise SystemExit(f"--variant {v!r}: expected NAME=override;override;... (overrides may be empty)")
        out.append((name, [*common, *[o for o in spec.split(";") if o.strip()]]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="flow-matching generator checkpoint folder (pretrain output)")
    ap.add_argument("--milestones", default="250,500,1000")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "finetune_curve"))
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every run (Hydra syntax, as conf/)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDES",
        help="a study run: NAME=key=value;key=value (repeatable; runs in order, each in <out>/NAME)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--eval-prompts", type=int, default=36, help="geneval-shapes prompts (0: all 132; dpg: half, 0: all)"
    )
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--base-cfg0", action="store_true", help="also score the base at 50 steps without guidance")
    ap.add_argument("--base-only", action="store_true", help="only score the base (and cache it for the variants)")
    ap.add_argument("--summarize", action="store_true", help="only rebuild <out>/summary.md from the variants' scores")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.summarize:
        print(summarize(out))
        return 0
    if not args.base:
        ap.error("--base is required")
    milestones = sorted(int(m) for m in args.milestones.split(","))
    out.mkdir(parents=True, exist_ok=True)

    from twinflow_core.benchmarks.evaluate import Evaluation
    from twinflow_core.benchmarks.protocol import EvalConfig

    cfg = EvalConfig(
        domain="shapes",
        geneval_max_prompts=args.eval_prompts,
        dpg_max_items=max(args.eval_prompts // 2, 8) if args.eval_prompts else 0,
        images_per_prompt=args.images_per_prompt,
        reference_max_prompts=0,
        base_cfg=[0.0, 0.5],
    )
    ev = Evaluation(cfg, "shapes", json.loads((Path(args.base) / "model.json").read_text())["net_kwargs"]["image_size"])
    rs = Resampler(ev, cfg.images_per_prompt)
    base = None
    names = (*BASE_SETTINGS, "euler50") if args.base_cfg0 else BASE_SETTINGS
    if args.base_only:
        base = base_units(ev, args.base, out / "base_units.npz", names)
        (out / "base_scores.json").write_text(
            json.dumps({s: with_errors(rs, u, None) for s, u in base.items()}, indent=1)
        )
        print((out / "base_scores.json").read_text())
        return 0
    for name, overrides in parse_variants(args.variant, args.overrides):
        vout = out / name if name else out
        res: dict = {"base": args.base, "overrides": overrides, "milestones": milestones}
        if not args.skip_train:
            res["training"] = train_variant(args.base, vout, milestones, overrides, args.threads)
            (vout / "results.json").write_text(json.dumps(res, indent=1, default=str))
        if base is None:  # after the first run's training, so that a parallel runner has usually cached it
            base = base_units(ev, args.base, out / "base_units.npz", names)
            (out / "base_scores.json").write_text(
                json.dumps({s: with_errors(rs, u, None) for s, u in base.items()}, indent=1)
            )
        scores = score_variant(ev, rs, base, vout, milestones, overrides)
        scores["sec_per_step_median"] = res.get("training", {}).get("sec_per_step_median")
        scores["wall_seconds"] = res.get("training", {}).get("wall_seconds")
        scores["recipe"] = res.get("training", {}).get("recipe")
        (vout / "scores.json").write_text(json.dumps(scores, indent=1))
        print(summarize(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

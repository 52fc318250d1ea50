"""How 1-NFE quality grows with the TwinFlow fine-tuning budget: one run, the generator exported at milestones.

    python bench/finetune_curve.py --base outputs/bench/train_compare/shapes/base --milestones 250,500,1000,1500 \
        [--out outputs/bench/finetune_curve] [--set train.lr=1e-3 ...] [--threads 1] [--eval-prompts 36]

Fine-tunes the flow-matching base `--base` with the recipe in conf/ (train section, objective=twinflow unless
overridden by --set) for max(milestones) steps, exporting the generator (EMA weights, the same export the train
stage writes) at each milestone, then scores each export at 1, 2, 4 NFE and the base at 50 Euler steps with the
matching guidance (cfg 0.5 when the target bakes in enhanced_ratio 0.5) on the embedded benchmarks. The question
it answers: is the default recipe's gap to the base a budget question (it closes with more steps) or not.
Writes <out>/results.json and results.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def milestone_exporter(out: Path, milestones: list[int]):
    import lightning as L

    from twinflow_core.training.callbacks import ExportGenerator

    class ExportAtMilestones(L.Callback):
        """Reuses the run's own ExportGenerator (same weights, same metadata) with another output folder."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step in milestones and not (out / f"step-{step:05d}" / "model.json").is_file():
                main = next(c for c in trainer.callbacks if isinstance(c, ExportGenerator))
                ExportGenerator(out / f"step-{step:05d}", main.net_name, main.net_kwargs, main.tokenizer,
                                main.extra).on_train_end(trainer, pl_module)

    return ExportAtMilestones()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="flow-matching generator checkpoint folder (pretrain output)")
    ap.add_argument("--milestones", default="250,500,1000")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "finetune_curve"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-prompts", type=int, default=36)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    milestones = sorted(int(m) for m in args.milestones.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from twinflow_core.checkpoint import load_generator
    from twinflow_core.training.config import compose
    from twinflow_core.training.run import fit

    base = load_generator(args.base)
    res: dict = {"base": args.base, "overrides": args.overrides, "milestones": milestones}
    if not args.skip_train:
        from train_compare import ensure_dataset  # the sibling bench's: prepares the recipe's dataset if missing

        s, data = compose(["experiment=shapes_cpu", *args.overrides])
        ensure_dataset(data["data"])
        st = s.train
        st.data, st.init, st.out = str(ROOT / data["data"]["path"]), args.base, str(out / "final")
        st.steps, st.resume_dir, st.threads, st.sample_every = milestones[-1], str(out / "resume"), args.threads, 0
        t0, c0 = time.perf_counter(), time.process_time()
        info = fit("train", s, callbacks=[milestone_exporter(out, milestones)])
        res["training"] = {**info, "wall_seconds": round(time.perf_counter() - t0, 1),
                           "cpu_seconds": round(time.process_time() - c0, 1)}
        (out / "results.json").write_text(json.dumps(res, indent=1, default=str))

    from twinflow_core.benchmarks.evaluate import EvalConfig, Evaluation, Setting

    cfg = EvalConfig(domain="shapes", geneval_max_prompts=args.eval_prompts, dpg_max_items=max(args.eval_prompts // 2, 8),
                     reference_max_prompts=0)
    ev = Evaluation(cfg, "shapes", base.image_size)
    metrics = dict(ev.real_metrics())
    metrics.update(ev.run(base, [Setting("euler50", 50, "euler"), Setting("euler50-cfg0.5", 50, "euler", 0.5)],
                          prefix="base/", name="base").metrics)
    for m in milestones:
        gen = load_generator(out / f"step-{m:05d}")
        metrics.update(ev.run(gen, [Setting(f"{n}nfe", n, "few") for n in (1, 2, 4)], prefix=f"step{m}/",
                              name=f"step{m}").metrics)
    res["metrics"] = metrics
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))

    keys = ["geneval-shapes/overall", "dpg-shapes/score", "features-shapes/fd"]
    lines = [f"# finetune_curve from {args.base}", "", f"overrides: {args.overrides}", "",
             "| model@setting | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    labels = [("base", "euler50"), ("base", "euler50-cfg0.5")]
    labels += [(f"step{m}", f"{n}nfe") for m in milestones for n in (1, 2, 4)]
    for run, setting in labels:
        row = [f"{metrics.get(f'{run}/{k}@{setting}', float('nan')):.4g}" for k in keys]
        lines.append(f"| {run}@{setting} | " + " | ".join(row) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage `evaluate`: score checkpoints/twinflow (at 1, 2, 4 NFE) and the flow-matching base (1, 2, 4 NFE and
N Euler steps with/without guidance) on the embedded benchmarks; optionally on the official ones.

    python -m flows.stages.evaluate [--params params.yaml] [--set evaluate.geneval_max_prompts=24 ...]

Writes (paths from the `evaluate` section):
- metrics/eval.json: flat metrics, names carrying benchmark and setting (`geneval-shapes/overall@1nfe`,
  `base/geneval-shapes/overall@euler50`, `features-shapes/fd@1nfe`, `throughput/images_per_s@1nfe`, ...);
- metrics/eval_breakdown.json: per setting, the GenEval per-tag summary and the DPG category scores;
- metrics/plots/by_setting.csv (one row per model x setting) and metrics/plots/geneval_tags.csv (for `dvc plots`);
- reports/samples_<setting>.png (the TwinFlow model) and reports/samples_base/<setting>.png (the base),
  captioned with the prompt and the benchmark's verdict.
Prints one JSON summary line; a user-fixable problem is one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from twinflow_core.errors import ConfigError, TwinflowError, exit_code

STAGE_KEYS = ("checkpoint", "base", "metrics", "breakdown", "plots_dir", "reports_dir", "official")


def split_section(section: dict) -> tuple[dict, dict]:
    """(stage paths/options, EvalConfig fields)."""
    section = dict(section or {})
    return {k: section.pop(k) for k in STAGE_KEYS if k in section}, section


def write_outputs(result_metrics: dict, breakdown: dict, curves: list[dict], grids: dict, paths: dict) -> None:
    from twinflow_core.viz import save_image_grid

    metrics_path = Path(paths.get("metrics", "metrics/eval.json"))
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(dict(sorted(result_metrics.items())), indent=2) + "\n")
    Path(paths.get("breakdown", "metrics/eval_breakdown.json")).write_text(json.dumps(breakdown, indent=2) + "\n")
    plots = Path(paths.get("plots_dir", "metrics/plots"))
    plots.mkdir(parents=True, exist_ok=True)
    cols = ["model", "setting", "nfe", "geneval_shapes", "dpg_shapes", "digits", "fd", "diversity", "images_per_s"]
    used = [c for c in cols if any(c in r for r in curves)]
    # by_setting.csv: every setting run on all prompts; by_setting_refset.csv: every setting on the prompts the
    # many-step reference ran on (written only when that is a subset).
    for fname, which in (("by_setting.csv", "all"), ("by_setting_refset.csv", "refset")):
        rows = [r for r in curves if r.get("prompts") == which]
        if not rows:
            continue
        with (plots / fname).open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=used, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    with (plots / "geneval_tags.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["setting", "tag", "score"])
        for setting, b in breakdown.items():
            for tag, t in (b.get("geneval-shapes") or {}).get("tags", {}).items():
                w.writerow([setting, tag, round(t["score"], 6)])
    reports = Path(paths.get("reports_dir", "reports"))
    for name, (images, captions) in grids.items():
        # twinflow: reports/samples_<setting>.png; base: reports/samples_base/<setting>.png (one DVC out)
        path = reports / "samples_base" / f"{name[5:]}.png" if name.startswith("base_") else reports / f"samples_{name}.png"
        title = ("flow-matching base" if name.startswith("base_") else "twinflow") + f" @{name.removeprefix('base_')}"
        save_image_grid(images, path, captions=captions, ncol=8, title=f"{title}: prompt [benchmark verdict]")


def run(params: dict) -> dict:
    from twinflow_core.benchmarks.evaluate import EvalConfig, Evaluation, domain_of, settings_for
    from twinflow_core.checkpoint import load_generator

    stage, fields = split_section(params.get("evaluate"))
    cfg = EvalConfig.from_dict(fields)
    if not stage.get("checkpoint"):
        raise ConfigError("evaluate.checkpoint: the generator checkpoint directory is required")
    t0 = time.perf_counter()
    model = load_generator(stage["checkpoint"])
    domain = domain_of(model, cfg)
    evaluation = Evaluation(cfg, domain, model.image_size)
    metrics = evaluation.real_metrics()
    res = evaluation.run(model, settings_for(cfg, base=False), name="twinflow")
    metrics.update(res.metrics)
    breakdown, curves, grids = dict(res.breakdown), list(res.curves), dict(res.grids)
    if stage.get("base"):
        base = load_generator(stage["base"])
        if domain_of(base, cfg) != domain or base.image_size != model.image_size:
            raise ConfigError(f"evaluate.base: {stage['base']} is not the same domain / image size as "
                              f"{stage['checkpoint']}")
        rb = evaluation.run(base, settings_for(cfg, base=True), prefix="base/", name="base")
        metrics.update(rb.metrics)
        breakdown.update(rb.breakdown)
        curves += rb.curves
        grids.update(rb.grids)
    official = stage.get("official") or {}
    if official.get("enabled"):
        from twinflow_core.benchmarks.evaluate import run_official

        metrics.update(run_official(model, official, cfg.nfe, Path(stage.get("reports_dir", "reports")) / "official"))
    metrics["evaluate/seconds"] = time.perf_counter() - t0
    write_outputs(metrics, breakdown, curves, grids, stage)
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stages.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key, e.g. evaluate.geneval_max_prompts=24 (repeatable)")
    args = parser.parse_args(argv)
    try:
        from flows.stages.prepare import load_params

        metrics = run(load_params(args.params, args.overrides))
    except TwinflowError as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return exit_code(err)
    keys = [k for k in metrics if k.endswith("@1nfe") and "/" in k and k.count("/") <= 2
            and ("overall" in k or "score@" in k or "accuracy" in k or "/fd@" in k)]
    print(json.dumps({"seconds": round(metrics["evaluate/seconds"], 1), **{k: round(metrics[k], 4) for k in keys}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

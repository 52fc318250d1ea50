"""Stage `evaluate`: score checkpoints/twinflow (at 1, 2, 4 NFE) and the flow-matching base (1, 2, 4 NFE and
N Euler steps with/without guidance) on the embedded benchmarks; optionally on the official ones.

    python -m flows.stages.evaluate [--params params.yaml] [--set evaluate.geneval_max_prompts=24 ...]

Writes (paths from the `evaluate` section):
- metrics/eval.json: flat metrics, names carrying benchmark and setting (`geneval-shapes/overall@1nfe`,
  `base/geneval-shapes/overall@euler50`, `features-shapes/fd@1nfe`, ...): the same inputs give it bitwise;
- metrics/eval.timing.json: the wall-clock figures (`throughput/images_per_s@1nfe`, `evaluate/seconds`), kept out
  of eval.json so that a rerun leaves the DVC-tracked metrics (and `git status`) unchanged; untracked, and logged
  to MLflow beside the scores at registration (flows/tracking.py read_scores);
- metrics/eval_breakdown.json: per setting, the GenEval per-tag summary and the DPG category scores;
- metrics/plots/by_setting.csv (one row per model x setting) and metrics/plots/geneval_tags.csv (for `dvc plots`);
- reports/samples_<setting>.png (the TwinFlow model) and reports/samples_base/<setting>.png (the base),
  captioned with the prompt and the benchmark's verdict.
Each benchmark score comes with its standard error over prompts (`..._se@...`), and with
`evaluate.ratio_reference` set, `ratio/...` = a setting's score / the base's at that reference, paired over
the same prompts, with its standard error (twinflow_core/benchmarks/uncertainty.py `paired_ratios`).

The base's part (the many-step guided reference is most of the evaluation's cost) depends only on the base
checkpoint, the prompts, the evaluators, the evaluation code and the `evaluate` settings; it is kept in
`evaluate.base_cache` (default outputs/eval-base/<hash of all those>.json + .npz) and read back when a run
only changed the TwinFlow model. The same inputs give the same numbers, so a cached base is the base.
Prints one JSON summary line;
a user-fixable problem is one line on stderr, with its family's exit code (README, "Errors and exit codes").
"""

# Lazy imports: numpy, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from flows.metrics_files import is_timing, timing_path
from flows.params import load_with_sets
from flows.quiet import quiet_loading_bars, quiet_third_party
from flows.schema import STAGE_KEYS, split_section  # noqa: F401 (STAGE_KEYS: also read by tests)
from flows.stages._cli import stage_main, stage_parser
from twinflow_core.benchmarks.uncertainty import paired_ratios
from twinflow_core.errors import ConfigError

# What the base's evaluation reads besides its checkpoint, prompts and evaluators (the stage's code deps).
BASE_CODE = (
    "twinflow_core/benchmarks",
    "twinflow_core/sampler.py",
    "twinflow_core/generator.py",
    "twinflow_core/loader.py",
    "twinflow_core/files.py",
    "twinflow_core/nets",
    "twinflow_core/text.py",
    "twinflow_core/data/shapes.py",
    "twinflow_core/data/digits.py",
    "twinflow_core/data/prompt_sets.py",
)


def write_outputs(result_metrics: dict, breakdown: dict, curves: list[dict], grids: dict, paths: dict) -> None:
    from twinflow_core.viz import save_image_grid

    metrics_path = Path(paths.get("metrics", "metrics/eval.json"))
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    scores = {k: v for k, v in sorted(result_metrics.items()) if not is_timing(k)}
    timing = {k: v for k, v in sorted(result_metrics.items()) if is_timing(k)}
    metrics_path.write_text(json.dumps(scores, indent=2) + "\n")
    timing_path(metrics_path).write_text(json.dumps(timing, indent=2) + "\n")
    Path(paths.get("breakdown", "metrics/eval_breakdown.json")).write_text(json.dumps(breakdown, indent=2) + "\n")
    plots = Path(paths.get("plots_dir", "metrics/plots"))
    plots.mkdir(parents=True, exist_ok=True)
    # no images_per_s column: the plots are DVC-tracked and must not change between reruns of the same inputs
    cols = ["model", "setting", "nfe", "geneval_shapes", "dpg_shapes", "digits", "fd", "diversity"]
    used = [c for c in cols if any(c in r for r in curves)]
    # by_setting.csv: every setting run on all prompts; by_setting_refset.csv: every setting on the prompts the
    # many-step reference ran on (when that is every prompt, the same rows: dvc.yaml declares both files).
    for fname, which in (("by_setting.csv", "all"), ("by_setting_refset.csv", "refset")):
        rows = [r for r in curves if r.get("prompts") == which]
        if which == "refset" and not rows:
            rows = [r for r in curves if r.get("prompts") == "all"]
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
        path = (
            reports / "samples_base" / f"{name[5:]}.png"
            if name.startswith("base_")
            else reports / f"samples_{name}.png"
        )
        title = ("flow-matching base" if name.startswith("base_") else "twinflow") + f" @{name.removeprefix('base_')}"
        save_image_grid(images, path, captions=captions, ncol=8, title=f"{title}: prompt [benchmark verdict]")


def _tree_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def base_cache_key(base_dir: str, cfg, image_size: int) -> str:
    """sha256 over everything the base's evaluation depends on (see the module docstring)."""

    from twinflow_core.data.prepared import file_sha256

    root = Path(__file__).resolve().parents[2]
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("nfe", "style")}
    h = hashlib.sha256(json.dumps({"cfg": fields, "size": image_size}, sort_keys=True).encode())
    for label, top in (
        ("base", Path(base_dir)),
        ("prompts", Path(cfg.prompts_dir)),
        ("evaluators", Path(cfg.evaluators_dir)),
        *(("code", root / c) for c in BASE_CODE),
    ):
        for f in _tree_files(top):
            h.update(f"{label}:{f.relative_to(top) if f != top else f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()[:24]


def _save_base(path: Path, rb) -> None:
    from twinflow_core.data.prepared import write_npz

    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path.with_suffix(".npz"), {name: images for name, (images, _) in rb.grids.items()})
    per = {k: {p: list(v) for p, v in vals.items()} for k, vals in rb.per_prompt.items()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "metrics": rb.metrics,
                "breakdown": rb.breakdown,
                "curves": rb.curves,
                "captions": {n: c for n, (_, c) in rb.grids.items()},
                "per_prompt": per,
            }
        )
    )
    tmp.replace(path)  # the json last: a cache entry with a json is complete


def _load_base(path: Path):
    import numpy as np

    from twinflow_core.benchmarks.evaluate import Result

    if not path.is_file() or not path.with_suffix(".npz").is_file():
        return None
    raw = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz")) as z:
        grids = {n: (z[n], caps) for n, caps in raw["captions"].items()}
    per = {k: {p: (v[0], float(v[1])) for p, v in vals.items()} for k, vals in raw["per_prompt"].items()}
    return Result(raw["metrics"], raw["breakdown"], grids, raw["curves"], per)


def run(params: dict) -> dict:
    from twinflow_core.benchmarks.evaluate import Evaluation
    from twinflow_core.benchmarks.protocol import EvalConfig, domain_of, settings_for
    from twinflow_core.loader import is_latent, load_generator

    stage, fields = split_section(params.get("evaluate"))
    cfg = EvalConfig.from_dict(fields)
    if not stage.get("checkpoint"):
        raise ConfigError("evaluate.checkpoint: the generator checkpoint directory is required")
    t0 = time.perf_counter()
    if any(p and is_latent(p) for p in (stage["checkpoint"], stage.get("base"))):
        quiet_loading_bars()  # latent generators: diffusers pipeline folders
    model = load_generator(stage["checkpoint"])
    domain = domain_of(model, cfg)
    evaluation = Evaluation(cfg, domain, model.image_size)
    metrics = evaluation.real_metrics()
    res = evaluation.run(model, settings_for(cfg, base=False), name="twinflow")
    metrics.update(res.metrics)
    breakdown, curves, grids = dict(res.breakdown), list(res.curves), dict(res.grids)
    per_prompt = dict(res.per_prompt)
    if stage.get("base"):
        base = load_generator(stage["base"])
        if domain_of(base, cfg) != domain or base.image_size != model.image_size:
            raise ConfigError(
                f"evaluate.base: {stage['base']} is not the same domain / image size as {stage['checkpoint']}"
            )
        cache_dir = stage.get("base_cache", "outputs/eval-base")
        cache = Path(cache_dir) / f"{base_cache_key(stage['base'], cfg, base.image_size)}.json" if cache_dir else None
        rb = _load_base(cache) if cache else None
        if rb is not None:
            print(f"evaluate base: read from {cache} (same base, prompts, evaluators, code and settings)")
        else:
            rb = evaluation.run(base, settings_for(cfg, base=True), prefix="base/", name="base")
            if cache:
                _save_base(cache, rb)
        per_prompt.update(rb.per_prompt)
        metrics.update(rb.metrics)
        breakdown.update(rb.breakdown)
        curves += rb.curves
        grids.update(rb.grids)
    if cfg.ratio_reference:
        ratios = paired_ratios(per_prompt, cfg.ratio_reference)
        if stage.get("base") and not any(k.endswith(f"@{cfg.ratio_reference}") for k in per_prompt):
            raise ConfigError(
                f"evaluate.ratio_reference: {cfg.ratio_reference!r} is not a base setting of this "
                f"evaluation (have: {', '.join(s.label for s in settings_for(cfg, base=True))})"
            )
        metrics.update(ratios)
    official = stage.get("official") or {}
    if official.get("enabled"):
        from twinflow_core.benchmarks.official import run_official

        metrics.update(run_official(model, official, cfg.nfe, Path(stage.get("reports_dir", "reports")) / "official"))
    metrics["evaluate/seconds"] = time.perf_counter() - t0
    write_outputs(metrics, breakdown, curves, grids, stage)
    return metrics


def main(argv=None) -> int:
    args = stage_parser("evaluate", __doc__, "evaluate.geneval_max_prompts=24").parse_args(argv)
    quiet_third_party()

    def body() -> None:
        metrics = run(load_with_sets(args.params, args.overrides))
        keys = [
            k
            for k in metrics
            if k.endswith("@1nfe")
            and "/" in k
            and k.count("/") <= 2
            and ("overall" in k or "score@" in k or "accuracy" in k or "/fd@" in k)
        ]
        seconds = round(metrics["evaluate/seconds"], 1)
        print(json.dumps({"seconds": seconds, **{k: round(metrics[k], 4) for k in keys}}))

    return stage_main("evaluate", body)


if __name__ == "__main__":
    sys.exit(main())

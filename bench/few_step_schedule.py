"""Few-step schedule study: the trained generator at 2 (or 4) NFE under other intermediate times and re-noising.

The any-step sampler's 2-NFE times are the official [0.999, 0.6, 0] with fresh noise at the middle step (style
`few`, rho 1). This study keeps the weights and the evaluation of the default run and varies only the sampler: the
middle time g (2 NFE: [0.999, g, 0]) and the stochastic ratio rho (1: fresh noise, 0: the model's own predicted
noise, deterministic). Each variant is the evaluate stage's own code (`flows.stages.evaluate.run`) on the same
prompts and seeds, its outputs written to --out (never over the project's), the base read from the evaluate
cache, so every row is comparable with `metrics/eval.json` and with each other.

    python bench/few_step_schedule.py --workdir . --middle 0.3,0.45,0.6,0.75 --rho 1,0.5,0 \
        --out outputs/bench/few_step_schedule --report bench/results/few_step_schedule.md

Run it in a checkout where `make run` has produced checkpoints/twinflow (and the base cache under outputs/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = ("geneval-shapes/overall", "dpg-shapes/score", "features-shapes/fd")


def variant(params: dict, nfe: int, middle: float, rho: float, out: Path) -> dict:
    from flows.stages import evaluate
    from twinflow_core import sampler

    few = sampler.STYLE_DEFAULTS["few"]
    saved = (dict(few["gaps"]), few["rho"])
    # 2 NFE: time_grid(2, (g0, g)) = [1 - g0, g, 0]; 4 NFE: [1 - g0, ..., g, 0] in equal steps
    few["gaps"][nfe], few["rho"] = (0.001, middle), rho
    ev = dict(
        params["evaluate"],
        nfe=[nfe],
        metrics=str(out / "eval.json"),
        breakdown=str(out / "breakdown.json"),
        plots_dir=str(out / "plots"),
        reports_dir=str(out / "reports"),
    )
    try:
        t0 = time.perf_counter()
        metrics = evaluate.run({**params, "evaluate": ev})
    finally:
        few["gaps"], few["rho"] = saved
    row = {"nfe": nfe, "middle": middle, "rho": rho, "seconds": round(time.perf_counter() - t0, 1)}
    for key in KEYS:  # the evaluate stage's names: <key>@2nfe, <key>_se@2nfe, ratio/<key>[_se]@2nfe (no SE for FD)
        row[key] = metrics.get(f"{key}@{nfe}nfe")
        row[key + "_se"] = metrics.get(f"{key}_se@{nfe}nfe")
        row["ratio/" + key] = metrics.get(f"ratio/{key}@{nfe}nfe")
        row["ratio/" + key + "_se"] = metrics.get(f"ratio/{key}_se@{nfe}nfe")
    ref = params["evaluate"].get("ratio_reference", "euler50-cfg0.5")
    base_fd = metrics.get(f"base/features-shapes/fd@{ref}")
    row["fd_ratio"] = row["features-shapes/fd"] / base_fd if base_fd and row["features-shapes/fd"] else None
    return row


def report(rows: list[dict], committed: dict) -> str:
    def fmt(v, se=None, digits=3):
        if v is None:
            return "-"
        return f"{v:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")

    lines = [
        "# Few-step schedule study (the default run's weights, the sampler varied)",
        "",
        "Written by `bench/few_step_schedule.py` (its docstring has the command). Ratios are paired over prompts "
        "against the base at 50 guided Euler steps, with their standard errors; FD ratio = FD / the base's FD "
        "at that setting.",
        "",
        "| NFE | middle time | rho | geneval-shapes | dpg-shapes | FD | geneval ratio | dpg ratio | FD ratio | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nfe']} | {r['middle']} | {r['rho']} | {fmt(r['geneval-shapes/overall'], r['geneval-shapes/overall_se'])} "
            f"| {fmt(r['dpg-shapes/score'], r['dpg-shapes/score_se'], 1)} | {fmt(r['features-shapes/fd'], None, 2)} "
            f"| {fmt(r['ratio/geneval-shapes/overall'], r['ratio/geneval-shapes/overall_se'], 2)} "
            f"| {fmt(r['ratio/dpg-shapes/score'], r['ratio/dpg-shapes/score_se'], 2)} | {fmt(r['fd_ratio'], None, 2)} "
            f"| {r['seconds']} |"
        )
    if committed:
        lines += [
            "",
            "The committed `metrics/eval.json` (official schedule) for comparison: "
            + ", ".join(f"{k} {v:.4g}" for k, v in committed.items()),
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=".", help="a checkout with checkpoints/twinflow from `make run`")
    ap.add_argument("--nfe", type=int, default=2)
    ap.add_argument("--middle", default="0.3,0.45,0.6,0.75", help="the last intermediate time(s), comma-separated")
    ap.add_argument("--rho", default="1,0", help="stochastic ratio(s), comma-separated (1 = official few)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="outputs/bench/few_step_schedule")
    ap.add_argument("--report", default="")
    args = ap.parse_args(argv)
    os.chdir(args.workdir)
    from flows.params import load_with_sets
    from flows.quiet import quiet_third_party

    quiet_third_party()
    params = load_with_sets("params.yaml", args.overrides)
    rows = []
    for rho in [float(v) for v in args.rho.split(",")]:
        for middle in [float(v) for v in args.middle.split(",")]:
            out = Path(args.out) / f"nfe{args.nfe}-middle{middle}-rho{rho}"
            rows.append(variant(params, args.nfe, middle, rho, out))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "rows.json").write_text(json.dumps(rows, indent=1))
    committed = {}
    if Path("metrics/eval.json").is_file():
        m = json.loads(Path("metrics/eval.json").read_text())
        committed = {
            k: m[k]
            for k in (
                f"ratio/geneval-shapes/overall@{args.nfe}nfe",
                f"ratio/dpg-shapes/score@{args.nfe}nfe",
                f"features-shapes/fd@{args.nfe}nfe",
            )
            if k in m
        }
    text = report(rows, committed)
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

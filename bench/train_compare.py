"""The paper's claim in miniature, measured on the default CPU recipe (the acceptance bench).

    python bench/train_compare.py [--domain shapes|digits] [--out outputs/bench/train_compare] [--runs ...]
                                  [--eval-prompts N] [--set KEY=VALUE ...] [--threads 1] [--skip-eval] [--cost-only]

Trains, with the recipe in conf/ (the same code the DVC stages run; outputs under --out, never checkpoints/):
  base      flow matching (pretrain stage)            -> sampled at 1/2/4 NFE and 50 Euler steps (w = 0, 0.5)
  twinflow  TwinFlow fine-tuning of the base           -> 1/2/4 NFE
  rcgm      RCGM-only fine-tuning of the base          -> 1/2/4 NFE
  scratch   TwinFlow from random init, the same wall-clock budget as base + twinflow -> 1/2/4 NFE
then scores each with the embedded benchmarks (twinflow_core/benchmarks/evaluate.py: geneval-shapes,
dpg-shapes, Frechet distance in evaluator features; digits: classifier accuracy + FD), and measures time per
step and peak memory of one TwinFlow step against one flow-matching step on the default net.
Guidance: the TwinFlow target bakes in w_e = 0.5 (F_c + 0.5 (F_c - F_u), i.e. classic scale 1.5), so the
"matching guidance" reference is the base at 50 Euler steps with cfg_scale 0.5.

Writes <out>/<domain>/results.json, results.md and grid_*.png. Timings are wall clock on this shared 2-core
machine (other jobs may be running; see results.json "load") plus process CPU time, which load inflates less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RUNS = ("base", "twinflow", "rcgm", "scratch")


def loadavg() -> list[float]:
    return [round(float(v), 2) for v in Path("/proc/loadavg").read_text().split()[:3]]


def ensure_dataset(data: dict) -> Path:
    """Prepare the composed recipe's dataset (conf/data/*.yaml plus --set overrides) unless it exists."""
    from twinflow_core.data.config import DataConfig
    from twinflow_core.data.prepared import prepare

    path = ROOT / data["path"]
    if (path / "meta.json").is_file():
        size = json.loads((path / "meta.json").read_text()).get("image_size")
        if size != data["image_size"]:
            raise SystemExit(
                f"{path}: prepared at {size} px, the recipe wants {data['image_size']} px; "
                f"run `dvc repro validate` or pass --set data.name=<another name>"
            )
    else:
        cfg = DataConfig.from_dict({"name": data["name"], "source": data["source"], "image_size": data["image_size"]})
        prepare(cfg, root=ROOT, out=path, progress=True)
    return path


def sections_for(domain: str, out: Path, threads: int, extra: list[str]):
    from twinflow_core.training.compose import compose

    exp = "shapes_cpu" if domain == "shapes" else "digits_cpu"
    sections, data = compose([f"experiment={exp}", *extra])
    for st in (sections.pretrain, sections.train):
        st.data = str(ROOT / data["data"]["path"])
        st.resume_dir = str(out / "resume")
        st.threads, st.progress, st.sample_every = threads, True, 0
    sections.pretrain.out = str(out / "base")
    return sections


def train_runs(domain: str, out: Path, runs: list[str], threads: int, overrides: list[str]) -> dict:
    import copy

    from twinflow_core.training.run import fit

    info: dict = {}
    s = sections_for(domain, out, threads, overrides)
    cpu0 = time.process_time()
    if "base" in runs or any(r in runs for r in ("twinflow", "rcgm")):
        info["base"] = fit("pretrain", s)
        info["base"]["cpu_seconds"] = round(time.process_time() - cpu0, 1)
    for name in ("twinflow", "rcgm"):
        if name in runs:
            sn = copy.deepcopy(s)
            if name == "rcgm":
                sn.objective.train = sections_for(domain, out, threads, [*overrides, "objective=rcgm"]).objective.train
            sn.train.init, sn.train.out = str(out / "base"), str(out / name)
            c0 = time.process_time()
            info[name] = fit("train", sn)
            info[name]["cpu_seconds"] = round(time.process_time() - c0, 1)
    if "scratch" in runs:
        # the same wall-clock budget as base + twinflow fine-tuning, spent on TwinFlow from random init
        budget = sum(info[k]["seconds"] for k in ("base", "twinflow") if k in info) or 600.0
        per_step = info.get("twinflow", {}).get("sec_per_step_median") or 2.0
        sn = copy.deepcopy(s)
        sn.train.init, sn.train.out = None, str(out / "scratch")
        sn.train.steps = max(4, int(budget / per_step))
        sn.train.seed = s.pretrain.seed
        sn.train.lr, sn.train.ema_decay = s.pretrain.lr, s.pretrain.ema_decay
        c0 = time.process_time()
        info["scratch"] = fit("train", sn)
        info["scratch"]["cpu_seconds"] = round(time.process_time() - c0, 1)
        info["scratch"]["budget_seconds"] = round(budget, 1)
    return info


def evaluate_runs(domain: str, out: Path, runs: list[str], prompts: int) -> dict:
    from twinflow_core.benchmarks.evaluate import Evaluation
    from twinflow_core.benchmarks.protocol import EvalConfig, Setting
    from twinflow_core.loader import load_generator
    from twinflow_core.viz import save_image_grid

    cfg = EvalConfig(
        domain=domain,
        geneval_max_prompts=prompts,
        dpg_max_items=max(prompts // 2, 8),
        reference_max_prompts=0,
        digits_per_class=max(prompts // 10, 5),
        base_cfg=[0.0, 0.5],
    )
    size = load_generator(out / "base").image_size
    ev = Evaluation(cfg, domain, size)
    metrics = dict(ev.real_metrics())
    grids = {}
    for name in runs:
        if not (out / name / "model.json").is_file():
            continue
        gen = load_generator(out / name)
        if name == "base":
            settings = [Setting(f"{n}nfe", n, "euler") for n in (1, 2, 4)]
            settings += [Setting("euler50", 50, "euler"), Setting("euler50-cfg0.5", 50, "euler", 0.5)]
        else:
            settings = [Setting(f"{n}nfe", n, "few") for n in (1, 2, 4)]
        res = ev.run(gen, settings, prefix=f"{name}/", name=name)
        metrics.update(res.metrics)
        grids.update(res.grids)
    for key, (images, captions) in grids.items():
        save_image_grid(images, out / f"grid_{key}.png", captions=captions, ncol=8, title=key)
    return metrics


COST_SNIPPET = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[3])
def hwm_kb():  # this process's peak RSS; ru_maxrss would carry the parent's over fork + exec (Linux keeps it)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
torch.set_num_threads(int(sys.argv[4]))
from twinflow_core.ema import EMA
from twinflow_core.nets import build_net
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective
from twinflow_core.training.compose import compose
preset, steps = sys.argv[1], int(sys.argv[2])
s, _ = compose([])
torch.manual_seed(0)
net = build_net("unet", **s.model.net_kwargs(), vocab_size=40, max_len=40)
over = {"fm": s.objective.pretrain.overrides, "twinflow": s.objective.train.overrides}[preset]
obj = TwinFlowObjective(ObjectiveConfig.preset(preset, **over))
ema = EMA(net, 0.99)
opt = torch.optim.AdamW(net.parameters(), 1e-3)
B, S = s.train.batch_size, s.model.image_size
# the null caption padded like the captions, as the tokenizer pads every caption to max_len in training
x = torch.randn(B, 3, S, S); ids = torch.randint(1, 40, (B, 24)); un = torch.zeros(B, 24, dtype=torch.long)
def step():
    loss, _ = obj(net, x, ids, uncond=un, ema=ema); opt.zero_grad(); loss.backward(); opt.step()
# before the first step: what a step adds (activations, autograd buffers, the optimiser's moments) shows as
# peak - setup; measured after it, the high-water mark already holds the step and the difference is 0
base_rss = hwm_kb()
step()
walls, cpus = [], []
for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time(); step()
    walls.append(time.perf_counter() - t0); cpus.append(time.process_time() - c0)
peak = hwm_kb()
walls.sort(); cpus.sort()
print(json.dumps({"preset": preset, "sec_per_step": walls[len(walls) // 2], "cpu_sec_per_step": cpus[len(cpus) // 2],
                  "peak_rss_mb": peak / 1024, "setup_rss_mb": base_rss / 1024,
                  "params": sum(p.numel() for p in net.parameters()), "batch": B}))
"""


def step_cost(steps: int, threads: int, rounds: int = 3) -> dict:
    """Time per step and peak memory of one optimiser step, fm vs twinflow, each in a fresh process.

    This 2-core CPU's speed drifts by tens of percent within minutes, so fm and twinflow alternate for `rounds` rounds
    and each figure is the median over rounds (the per-round values are kept)."""
    runs: dict = {"fm": [], "twinflow": []}
    for _ in range(rounds):
        for preset in ("fm", "twinflow"):
            proc = subprocess.run(
                [sys.executable, "-c", COST_SNIPPET, preset, str(steps), str(ROOT), str(threads)],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            )
            if proc.returncode:
                raise RuntimeError(proc.stderr[-2000:])
            runs[preset].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out: dict = {}
    for preset, results in runs.items():
        out[preset] = {
            **results[0],
            **{
                k: sorted(r[k] for r in results)[len(results) // 2]
                for k in ("sec_per_step", "cpu_sec_per_step", "peak_rss_mb", "setup_rss_mb")
            },
        }
        out[preset]["rounds_sec_per_step"] = [round(r["sec_per_step"], 4) for r in results]
    fm, tf = out["fm"], out["twinflow"]
    paired = sorted(t["sec_per_step"] / f["sec_per_step"] for f, t in zip(runs["fm"], runs["twinflow"]))
    out["ratios"] = {
        # each round's twinflow over the fm run just before it (the same few minutes of this CPU), median
        "time": paired[len(paired) // 2],
        "cpu_time": tf["cpu_sec_per_step"] / fm["cpu_sec_per_step"],
        "peak_rss": tf["peak_rss_mb"] / fm["peak_rss_mb"],
        # step memory: the growth of peak RSS over the set-up (weights, EMA, inputs) during the steps
        "step_memory": (tf["peak_rss_mb"] - tf["setup_rss_mb"]) / max(fm["peak_rss_mb"] - fm["setup_rss_mb"], 1e-9),
    }
    out["time_ratio_rounds"] = [round(r, 2) for r in paired]
    return out


def report(domain: str, res: dict) -> str:
    m = res.get("metrics", {})
    lines = [
        f"# train_compare: {domain}",
        "",
        f"load average before/after: {res['load_before']} / {res['load_after']}",
        "",
    ]
    if "training" in res:
        lines += ["| run | steps | wall s | CPU s | median s/step |", "|---|---|---|---|---|"]
        for k, v in res["training"].items():
            lines.append(
                f"| {k} | {v['steps']} | {v['seconds']} | {v.get('cpu_seconds')} | {v.get('sec_per_step_median')} |"
            )
        lines.append("")
    if m:
        keys = (
            ["geneval-shapes/overall", "dpg-shapes/score", "features-shapes/fd", "features-shapes/diversity"]
            if domain == "shapes"
            else ["digits/accuracy", "features-digits/fd", "features-digits/diversity"]
        )
        lines += ["| model@setting | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        labels = sorted(
            {
                k.split("@", 1)[0].split("/", 1)[0] + "@" + k.split("@", 1)[1]
                for k in m
                if "@" in k and "/" in k.split("@")[0] and k.split("/", 1)[0] in RUNS
            }
        )
        for lab in labels:
            run, setting = lab.split("@")
            row = [f"{m.get(f'{run}/{k}@{setting}', float('nan')):.4g}" for k in keys]
            lines.append(f"| {lab} | " + " | ".join(row) + " |")
        real = [f"{k}={v:.4g}" for k, v in m.items() if k.endswith("@real")]
        lines += ["", "real vs real: " + ", ".join(real), ""]
    if "cost" in res:
        c = res["cost"]
        lines += [
            f"step cost (batch {c['fm']['batch']}, {c['fm']['params']} params): fm {c['fm']['sec_per_step']:.3f} s "
            f"({c['fm']['cpu_sec_per_step']:.3f} CPU s), twinflow {c['twinflow']['sec_per_step']:.3f} s "
            f"({c['twinflow']['cpu_sec_per_step']:.3f} CPU s); ratios {json.dumps({k: round(v, 2) for k, v in c['ratios'].items()})}; "
            f"peak RSS fm {c['fm']['peak_rss_mb']:.0f} MB, twinflow {c['twinflow']['peak_rss_mb']:.0f} MB; "
            f"time ratio per round {c.get('time_ratio_rounds')}"
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", default="shapes", choices=("shapes", "digits"))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "train_compare"))
    ap.add_argument("--runs", default=",".join(RUNS), help=f"subset of {RUNS}")
    ap.add_argument(
        "--eval-prompts",
        type=int,
        default=None,
        help="shapes: geneval prompts (dpg items = half; default 60); digits: images, 1/10 per class "
        "(default 500: the Frechet distance of fewer images is dominated by its small-sample bias)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core box)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override of the recipe (repeatable), e.g. --set train.steps=400 --set data.image_size=24",
    )
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--cost-steps", type=int, default=5)
    ap.add_argument("--cost-rounds", type=int, default=3, help="alternating fm / twinflow rounds (median reported)")
    args = ap.parse_args(argv)
    out = Path(args.out) / args.domain
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for r in args.runs.split(",") if r]
    res_path = out / "results.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}
    res["load_before"] = loadavg()
    if not args.cost_only:
        if not args.skip_train:
            from twinflow_core.training.compose import compose

            exp = "shapes_cpu" if args.domain == "shapes" else "digits_cpu"
            ensure_dataset(compose([f"experiment={exp}", *args.overrides])[1]["data"])
            res["overrides"] = args.overrides
            res.setdefault("training", {}).update(train_runs(args.domain, out, runs, args.threads, args.overrides))
            res_path.write_text(json.dumps(res, indent=1))
        if not args.skip_eval:
            prompts = args.eval_prompts or (60 if args.domain == "shapes" else 500)
            res.setdefault("metrics", {}).update(evaluate_runs(args.domain, out, runs, prompts))
            res_path.write_text(json.dumps(res, indent=1))
    if args.domain == "shapes" and (args.cost_only or not args.skip_eval):
        res["cost"] = step_cost(args.cost_steps, args.threads, args.cost_rounds)
    res["load_after"] = loadavg()
    res["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res_path.write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(report(args.domain, res))
    print(report(args.domain, res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Few-step methods at equal compute, from the same base: every method of the objective registry
(twinflow_core/objectives: fm, rcgm, twinflow, meanflow, and any later entry) on the 2-D toy, plus the step cost
and peak memory of one training step of each on the default image net.

    python bench/method_table.py [--data 8gaussians,checkerboard] [--seeds 0,1] [--base-steps 2000] \
        [--budget-cpu-s 15] [--methods fm,rcgm,twinflow,meanflow] [--out bench/results/method_table.md]

Toy protocol (per distribution and seed): one flow-matching base (the `twinflow toy` recipe: MLP 4x256, Adam
1e-3 -> 1e-4, batch 512, `--base-steps` steps); then each method fine-tunes a copy of it for the same budget of
process CPU time (`--budget-cpu-s`, one thread: on an idle core that is the wall-clock budget, and unlike wall
time it does not depend on the other processes of a shared machine). Each method's step count is the budget
over its own measured CPU time per step, its learning rate decays 1e-3 -> 1e-4 over those steps, with the
registered toy overrides (L2 for the TwinFlow family; MeanFlow as published). Samples at 1, 2 and 4 NFE with the
method's registered sampler (fm: Euler), the base also at 50 Euler steps; sliced W2 and MMD against 10,000
held-out points, mean +- SE over seeds, and the ratio of 1-NFE sliced W2 to the base's 50-step one.

Step cost: a fresh process per method (in turn, `--cost-rounds` rounds, median), the default net and batch
(conf/, the method's conf/objective/<name>.yaml), one thread: CPU seconds per optimiser step and the growth of
the peak RSS during the steps over the set-up (weights, EMA, optimiser, inputs).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def finetune(base, method: str, data: np.ndarray, budget: float, seed: int, probe: int = 20) -> tuple:
    import torch

    from twinflow_core import objectives
    from twinflow_core.ema import EMA
    from twinflow_core.objective import sanitize_and_clip_grads_

    torch.set_num_threads(1)
    torch.manual_seed(seed + 100)
    net = copy.deepcopy(base).train()
    m = objectives.get(method)
    obj = objectives.build_objective(m.config(**m.toy))
    ema = EMA(net, 0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.as_tensor(data, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 200)

    def step():
        x = data[torch.randint(0, len(data), (512,), generator=gen)]
        loss, _ = obj(net, x, ema=ema)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sanitize_and_clip_grads_(net.parameters(), 1.0)
        opt.step()

    c0 = time.process_time()
    for _ in range(probe):  # the probe steps are training steps too (counted in the budget)
        step()
    per_step = (time.process_time() - c0) / probe
    steps = max(probe, int(budget / per_step))
    gamma = (1e-4 / 1e-3) ** (1.0 / max(steps - probe, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    for _ in range(steps - probe):
        step()
        sched.step()
    return net.eval(), steps, time.process_time() - c0


def toy_run(data_name: str, seed: int, methods: list[str], base_steps: int, budget: float) -> dict:
    from twinflow_core.toy import data2d, metrics2d
    from twinflow_core.toy.runner import ToyConfig, generate, train

    train_raw, held_out = data2d.make_split(data_name, seed)
    mean, std = train_raw.mean(0), train_raw.std(0)
    norm = (train_raw - mean) / std
    c0 = time.process_time()
    base, _ = train(ToyConfig(data=data_name, method="fm", steps=base_steps, seed=seed), norm, progress=False)
    base.eval()
    out = {"base_cpu_s": round(time.process_time() - c0, 1), "methods": {}}

    def score(net, method, nfe):
        samples, style = generate(net, method, nfe, 10_000, seed + 1)
        met = metrics2d.all_metrics(samples * std + mean, held_out, seed=seed)
        return {"sampler": style, "sliced_w2": met["sliced_w2"], "mmd": met["mmd"]}

    out["base"] = {str(k): score(base, "fm", k) for k in (1, 2, 4, 50)}
    for method in methods:
        net, steps, cpu = finetune(base, method, norm, budget, seed)
        out["methods"][method] = {
            "steps": steps,
            "cpu_s": round(cpu, 2),
            "ms_per_step": round(1000 * cpu / steps, 2),
            "nfe": {str(k): score(net, method, k) for k in (1, 2, 4)},
        }
        print(
            f"{data_name} seed {seed} {method}: {steps} steps, {cpu:.1f} CPU s, 1 NFE sliced W2 "
            f"{out['methods'][method]['nfe']['1']['sliced_w2']:.4f}",
            flush=True,
        )
    return out


COST_SNIPPET = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[3])
def hwm_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
torch.set_num_threads(1)
from twinflow_core import objectives
from twinflow_core.ema import EMA
from twinflow_core.nets import build_net
from twinflow_core.training.compose import compose
method, steps = sys.argv[1], int(sys.argv[2])
s, _ = compose([f"objective={method}"])
torch.manual_seed(0)
net = build_net("unet", **s.model.net_kwargs(), vocab_size=40, max_len=40)
obj = objectives.build_objective(s.objective.train.build("objective.train"))
ema = EMA(net, s.train.ema_decay)
opt = torch.optim.AdamW(net.parameters(), 1e-3)
B, S = s.train.batch_size, s.model.image_size
x = torch.randn(B, 3, S, S); ids = torch.randint(1, 40, (B, 24)); un = torch.zeros(B, 24, dtype=torch.long)
def step():
    loss, _ = obj(net, x, ids, uncond=un, ema=ema); opt.zero_grad(); loss.backward(); opt.step()
base_rss = hwm_kb()
step()
cpus = []
for _ in range(steps):
    c0 = time.process_time(); step(); cpus.append(time.process_time() - c0)
cpus.sort()
print(json.dumps({"method": method, "cpu_sec_per_step": cpus[len(cpus) // 2], "step_rss_mb": (hwm_kb() - base_rss) / 1024,
                  "peak_rss_mb": hwm_kb() / 1024, "params": sum(p.numel() for p in net.parameters()), "batch": B}))
"""


def step_cost(methods: list[str], steps: int, rounds: int) -> dict:
    runs: dict = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            proc = subprocess.run(
                [sys.executable, "-c", COST_SNIPPET, m, str(steps), str(ROOT)],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            if proc.returncode:
                raise RuntimeError(proc.stderr[-2000:])
            runs[m].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = {}
    for m, rs in runs.items():
        med = lambda k: sorted(r[k] for r in rs)[len(rs) // 2]  # noqa: E731, B023 - called within the iteration
        out[m] = {
            **rs[0],
            "cpu_sec_per_step": med("cpu_sec_per_step"),
            "step_rss_mb": med("step_rss_mb"),
            "peak_rss_mb": med("peak_rss_mb"),
            "rounds_cpu_sec_per_step": [round(r["cpu_sec_per_step"], 3) for r in rs],
        }
    return out


def mean_se(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    se = a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
    return f"{a.mean():.4f} ± {se:.4f}"


def report(res: dict, command: str) -> str:
    lines = [
        "# Few-step methods at equal compute, from the same base",
        "",
        f"Command: `{command}` ({res['cpu_seconds']:.0f} CPU s in all, {res['wall_seconds']:.0f} s wall on the "
        f"shared 2-core machine). Generated by `bench/method_table.py`; the protocol is its docstring.",
        "",
        f"Toy: flow-matching base of {res['base_steps']} steps per distribution and seed; every method then "
        f"fine-tunes a copy for {res['budget_cpu_s']} CPU seconds (one thread). Sliced W2 against 10,000 "
        f"held-out points (data units), mean ± SE over seeds {res['seeds']}; ratio: 1-NFE sliced W2 over the "
        "base's at 50 Euler steps (1.0 = one step as good as fifty).",
        "",
        "| data | method | steps in budget | CPU ms/step | 1 NFE | 2 NFE | 4 NFE | 1 NFE / base@50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in res["data"]:
        runs = [res["toy"][f"{d}-s{s}"] for s in res["seeds"]]
        b = {k: [r["base"][k]["sliced_w2"] for r in runs] for k in ("1", "2", "4", "50")}
        lines.append(
            f"| {d} | base (fm, Euler) | {res['base_steps']} | | {mean_se(b['1'])} | {mean_se(b['2'])} | "
            f"{mean_se(b['4'])} | 50 NFE: {mean_se(b['50'])} |"
        )
        for m in res["methods"]:
            rows = [r["methods"][m] for r in runs]
            w = {k: [row["nfe"][k]["sliced_w2"] for row in rows] for k in ("1", "2", "4")}
            ratio = [row["nfe"]["1"]["sliced_w2"] / r["base"]["50"]["sliced_w2"] for row, r in zip(rows, runs)]
            lines.append(
                f"| {d} | {m} ({rows[0]['nfe']['1']['sampler']}) | {int(np.mean([r['steps'] for r in rows]))} | "
                f"{np.mean([r['ms_per_step'] for r in rows]):.1f} | {mean_se(w['1'])} | {mean_se(w['2'])} | "
                f"{mean_se(w['4'])} | {np.mean(ratio):.2f}x |"
            )
    if res.get("cost"):
        c = res["cost"]
        fm = c.get("fm", {}).get("cpu_sec_per_step")
        lines += [
            "",
            f"Step cost on the default image net ({next(iter(c.values()))['params']} parameters, batch "
            f"{next(iter(c.values()))['batch']}, one thread, conf/objective/<method>.yaml; median of "
            f"{res['cost_rounds']} fresh processes per method, in turn):",
            "",
            "| method | CPU s/step | x fm | step memory (peak RSS growth, MB) | peak RSS (MB) |",
            "|---|---|---|---|---|",
        ]
        for m, v in c.items():
            rel = f"{v['cpu_sec_per_step'] / fm:.2f}" if fm else ""
            lines.append(
                f"| {m} | {v['cpu_sec_per_step']:.3f} | {rel} | {v['step_rss_mb']:.0f} | {v['peak_rss_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="8gaussians,checkerboard")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--methods", default=None, help="default: every registered method")
    ap.add_argument("--base-steps", type=int, default=2000)
    ap.add_argument("--budget-cpu-s", type=float, default=15.0)
    ap.add_argument("--cost-steps", type=int, default=3)
    ap.add_argument("--cost-rounds", type=int, default=3)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "method_table.md"))
    args = ap.parse_args(argv)
    from twinflow_core import objectives

    methods = args.methods.split(",") if args.methods else list(objectives.names())
    c0, t0 = time.process_time(), time.perf_counter()
    res = {
        "data": args.data.split(","),
        "seeds": [int(s) for s in args.seeds.split(",")],
        "methods": methods,
        "base_steps": args.base_steps,
        "budget_cpu_s": args.budget_cpu_s,
        "cost_rounds": args.cost_rounds,
        "toy": {},
    }
    for d in res["data"]:
        for s in res["seeds"]:
            res["toy"][f"{d}-s{s}"] = toy_run(d, s, methods, args.base_steps, args.budget_cpu_s)
    if not args.skip_cost:
        res["cost"] = step_cost(methods, args.cost_steps, args.cost_rounds)
    children = os.times()
    res["cpu_seconds"] = time.process_time() - c0 + children.children_user + children.children_system
    res["wall_seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    text = report(res, "python bench/method_table.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

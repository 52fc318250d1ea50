"""Step cost of the objective settings on one net: time per training step and peak memory, twinflow vs fm.

    .venv/bin/python bench/step_cost.py --net mlp2d --batch 512 --steps 200

Each setting runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own; the figure reported
is the peak during training minus the resident size just before the first step (activations, grads, optimiser
state and any EMA copy). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from twinflow_core.ema import EMA
from twinflow_core.nets import build_net
from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective, sanitize_and_clip_grads_
torch.set_num_threads(1)
torch.manual_seed(0)
net = build_net({net!r}, **{kwargs!r})
shape = {shape!r}
x = torch.randn({batch}, *shape)
obj = TwinFlowObjective(ObjectiveConfig.preset({method!r}, loss="robust"))
ema = EMA(net, {ema})
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for i in range({steps} + 10):
    if i == 10:
        t0 = time.perf_counter()
    loss, _ = obj(net, x, ema=ema)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sanitize_and_clip_grads_(net.parameters())
    opt.step()
sec = (time.perf_counter() - t0) / {steps}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"ms_per_step": 1000 * sec, "peak_extra_mib": (peak - before) / 1024, "peak_rss_mib": peak / 1024}}))
"""


def measure(method, args):
    code = CHILD.format(
        root=str(ROOT),
        net=args.net,
        kwargs=json.loads(args.net_kwargs),
        shape=tuple(args.shape),
        batch=args.batch,
        method=method,
        steps=args.steps,
        ema=args.ema,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="mlp2d")
    ap.add_argument("--net-kwargs", default="{}")
    ap.add_argument("--shape", type=int, nargs="+", default=[2], help="sample shape without the batch dim")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.99)
    args = ap.parse_args()
    rows = {m: measure(m, args) for m in ("fm", "rcgm", "twinflow")}
    print(f"net {args.net} {args.net_kwargs}, batch {args.batch}, {args.steps} timed steps, EMA {args.ema}, 1 thread")
    print("| setting | ms/step | peak extra MiB | peak RSS MiB |\n|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r['ms_per_step']:.1f} | {r['peak_extra_mib']:.1f} | {r['peak_rss_mib']:.0f} |")
    fm, tw = rows["fm"], rows["twinflow"]
    print(
        f"twinflow / fm: time x{tw['ms_per_step'] / fm['ms_per_step']:.2f}, "
        f"peak extra memory x{tw['peak_extra_mib'] / max(fm['peak_extra_mib'], 1e-9):.2f}"
    )


if __name__ == "__main__":
    main()

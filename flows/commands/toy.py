"""`twinflow toy`: the 2-D benchmark (train one method, write metrics.json, samples and scatter plots)."""

# Lazy imports: numpy, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations


def _nfe_list(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--nfe must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--nfe values must be >= 1, got {text!r}")
    return values


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "toy", help="2-D benchmark: fm / rcgm / twinflow / meanflow on a toy distribution or PATH.npy"
    )
    p.add_argument(
        "--data", default="8gaussians", help="8gaussians, checkerboard, moons, swissroll, or PATH.npy of shape (n, 2)"
    )
    # any method of the objective registry (twinflow_core/objectives; checked when the run starts, so that the
    # CLI's start does not import the registry's torch code)
    p.add_argument("--method", default="twinflow", help="fm, rcgm, twinflow, meanflow, or another registered objective")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: ToyConfig.steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", type=_nfe_list, default=(1, 2, 4, 50), help="comma-separated, e.g. 1,2,4,50")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="weight of L_rectify (dist_match_cof)")
    p.add_argument("--loss", choices=["l2", "robust"], default=None)
    p.add_argument("--ema", type=float, default=None, help="EMA decay of the teacher (0: online model)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from twinflow_core.toy.runner import ToyConfig, run

    cfg = ToyConfig(data=args.data, method=args.method, seed=args.seed, nfe=args.nfe)
    for name, value in (("steps", args.steps), ("batch_size", args.batch_size), ("ema_decay", args.ema)):
        if value is not None:
            setattr(cfg, name, value)
    overrides = {}
    if args.lam is not None:
        overrides["dist_match_cof"] = args.lam
    if args.loss is not None:
        overrides["loss"] = args.loss
    cfg.objective = overrides
    results = run(cfg, args.out, progress=not args.no_progress)
    rows = [
        f"  {k:>3} NFE ({v['sampler']}): sliced W2 {v['sliced_w2']:.4f}  MMD {v['mmd']:.4f}  energy {v['energy']:.4f}"
        for k, v in results["nfe"].items()
    ]
    print(
        f"{args.method} on {args.data}: {cfg.steps} steps in {results['train_seconds']:.1f} s "
        f"({1000 * results['seconds_per_step']:.1f} ms/step)"
    )
    print("\n".join(rows))
    print(f"wrote {args.out}/metrics.json, samples_nfe*.npy, scatter_nfe*.png")
    return 0

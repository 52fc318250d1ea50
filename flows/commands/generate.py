"""`twinflow generate PROMPT ... --model REF --nfe 1 --out out.png`: pictures from a trained generator.

REF is a local generator folder (checkpoints/twinflow), `s3://bucket/prefix`, or a registered MLflow model
(`models:/twinflow-shapes@champion`, `models:/twinflow-shapes/3`, `runs:/<id>/model`); a remote one is fetched
into a temporary folder the way `train.init` is (flows/init_source.py). The grid has one row per prompt and
one column per seed, each picture captioned with its prompt and seed; the same prompts and seeds always give
the same pictures. `--style euler --cfg 0.5 --nfe 50` samples a flow-matching base the way the reference is.
"""

# Lazy imports: numpy, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from flows import init_source, tracking
from flows.init_source import is_remote
from flows.params import load_params
from twinflow_core.bounds import check_text, number_problem
from twinflow_core.errors import CheckpointError, TwinflowError, UsageError

DEFAULT_MODEL = "models:/twinflow-shapes@champion"
MAX_NFE = 1000


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="draw pictures from a trained model (local folder, s3:// or models:/) into one captioned grid",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help='e.g. "a red circle left of a blue square"')
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"generator folder, s3://bucket/prefix, models:/NAME@ALIAS or runs:/ URI (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--nfe", type=int, default=1, help="network evaluations per picture (default: 1)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3],
        metavar="SEED",
        help="one grid column per seed (default: 0 1 2 3)",
    )
    p.add_argument(
        "--style",
        default="few",
        choices=["few", "any", "mul", "euler"],
        help="sampler: few/any/mul (TwinFlow's any-step sampler) or euler (a flow-matching base)",
    )
    p.add_argument("--cfg", type=float, default=0.0, help="guidance scale, --style euler only (default: 0)")
    p.add_argument("--out", default="out.png", help="PNG grid to write (default: out.png)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store for models:/ (default: $MLFLOW_TRACKING_URI, "
        "else params.yaml register.tracking_uri, else ./mlflow.db)",
    )
    p.set_defaults(func=run)


def _load(ref: str, tracking_uri: str | None):
    from twinflow_core.loader import load_generator

    if not is_remote(ref):
        if not Path(ref).is_dir():
            raise CheckpointError(f"--model {ref}: no such generator folder (or give s3://... or models:/NAME@ALIAS)")
        return load_generator(ref)

    params = load_params("params.yaml") if Path("params.yaml").is_file() else {}
    uri = tracking.resolve_tracking_uri(Path.cwd(), params, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="twinflow-generate-") as tmp:
        try:
            init_source.fetch(ref, Path(tmp) / "model", uri)
        except TwinflowError as err:  # its messages name the reference as a training init
            raise type(err)(str(err).replace("init ", "--model ", 1)) from None
        return load_generator(Path(tmp) / "model")


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; name the PNG file to write (e.g. {out / 'out.png'})")
    parent = out.absolute().parent
    while not parent.exists():  # missing folders are made (save_image_grid); the first that exists decides
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"--out {out}: not writable ({out if out.exists() else parent})")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from twinflow_core.viz import save_image_grid

    if args.nfe < 1:
        raise UsageError(f"--nfe must be >= 1, got {args.nfe}")
    if args.nfe > MAX_NFE:
        raise UsageError(f"--nfe must be <= {MAX_NFE}, got {args.nfe}")
    if not math.isfinite(args.cfg):
        raise UsageError(f"--cfg must be a finite number, got {args.cfg}")
    if args.cfg and args.style != "euler":
        raise UsageError("--cfg applies to --style euler only (the any-step sampler bakes guidance in)")
    bad_seed = next((s for s in args.seeds if number_problem("seed", s)), None)
    if bad_seed is not None:
        raise UsageError(f"--seeds: {number_problem('seed', bad_seed)}")
    for i, prompt in enumerate(args.prompts, 1):
        check_text(prompt, f"prompt {i}", UsageError)
    _check_out(Path(args.out))  # before the model is fetched and sampled: a bad path fails in a second
    gen = _load(args.model, args.tracking_uri)
    by_seed = [
        gen.generate(args.prompts, nfe=args.nfe, seed=s, style=args.style, cfg_scale=args.cfg) for s in args.seeds
    ]
    images = np.stack(by_seed, axis=1).reshape(-1, *by_seed[0].shape[1:])  # row = prompt, column = seed
    captions = [f"{p} (seed {s})" for p in args.prompts for s in args.seeds]
    setting = f"{args.nfe} NFE" if args.style != "euler" else f"{args.nfe} Euler steps, cfg {args.cfg:g}"
    try:
        out = save_image_grid(
            images, args.out, captions=captions, ncol=len(args.seeds), title=f"{args.model} @ {setting}"
        )
    except OSError as err:  # a full disk, a vanished folder
        raise UsageError(f"--out {args.out}: cannot write it ({err.strerror or err})") from None
    print(f"wrote {out}: {len(args.prompts)} prompt(s) x {len(args.seeds)} seed(s), {setting}")
    return 0

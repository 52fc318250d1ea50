"""Stage `prepare`: build data/prepared/<data.name>/ from the `data` section of params.yaml, and its sample grid
reports/data/<data.name>/samples.png.

    python -m flows.stages.prepare [--params params.yaml] [--set data.name=digits ...] [--root .]

Prints one summary line (images, seconds, images/s);
a user-fixable problem is one line on stderr, with its family's exit code (README, "Errors and exit codes").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.params import add_params_options, load_with_sets
from twinflow_core.errors import TwinflowError, exit_code


def parse_args(argv, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    add_params_options(parser, "override a params key, e.g. data.name=digits (repeatable)")
    parser.add_argument("--root", default=".", help="repository root: inputs and outputs are under it")
    return parser.parse_args(argv)


def run(params: dict, root: str | Path = ".", progress: bool = True) -> Path:
    from twinflow_core.data.config import DataConfig
    from twinflow_core.data.prepared import prepare, save_sample_grid

    cfg = DataConfig.from_dict(params.get("data"))
    root = Path(root)
    path, meta, seconds = prepare(cfg, root=root, progress=progress and sys.stderr.isatty())
    grid = save_sample_grid(path, root / "reports" / "data" / cfg.name / "samples.png")  # reads the grid's images only
    print(
        f"prepare: {meta['n']} {cfg.source} images at {cfg.image_size}px -> {path} in {seconds:.1f} s "
        f"({meta['n'] / seconds:.0f} images/s); grid {grid}"
    )
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])
    try:
        run(load_with_sets(Path(args.root) / args.params, args.overrides), args.root)
    except TwinflowError as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return exit_code(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

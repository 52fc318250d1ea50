"""Stage `prepare`: build data/prepared/<data.name>/ from the `data` section of params.yaml, and its sample grid
reports/data/<data.name>/samples.png.

    python -m flows.stages.prepare [--params params.yaml] [--set data.name=digits ...] [--root .]

Prints one summary line (images, seconds, images/s);
a user-fixable problem is one line on stderr, with its family's exit code (README, "Errors and exit codes").
"""

# Lazy imports: numpy, omegaconf
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import sys
from pathlib import Path

from flows.params import load_with_sets
from flows.stages._cli import stage_main, stage_parser


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
    args = stage_parser("prepare", __doc__, "data.name=digits", root=True).parse_args(argv)

    def body() -> None:
        run(load_with_sets(Path(args.root) / args.params, args.overrides), args.root)

    return stage_main("prepare", body)


if __name__ == "__main__":
    sys.exit(main())

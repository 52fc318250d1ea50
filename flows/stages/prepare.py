"""Stage `prepare`: build data/prepared/<data.name>/ from the `data` section of params.yaml, and its sample grid
reports/data/<data.name>/samples.png.

    python -m flows.stages.prepare [--params params.yaml] [--set data.name=digits ...] [--root .]

Prints one summary line (images, seconds, images/s); a user-fixable problem is one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twinflow_core.errors import ConfigError, TwinflowError, exit_code


def load_params(path: str | Path, overrides: list[str] | None = None) -> dict:
    """params.yaml as a dict, with dotted KEY=VALUE overrides applied (values parsed as YAML).

    Unlike `twinflow run` (flows/overrides.py), a stage accepts keys params.yaml leaves unset (e.g. data.source)."""
    import yaml

    from flows.overrides import load_params as read_params

    params = read_params(path)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        node = params
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return params


def parse_args(argv, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key, e.g. data.name=digits (repeatable)")
    parser.add_argument("--root", default=".", help="repository root: inputs and outputs are under it")
    return parser.parse_args(argv)


def run(params: dict, root: str | Path = ".", progress: bool = True) -> Path:
    from twinflow_core.data.config import DataConfig
    from twinflow_core.data.prepared import load_prepared, prepare, save_sample_grid

    cfg = DataConfig.from_dict(params.get("data"))
    root = Path(root)
    path, meta, seconds = prepare(cfg, root=root, progress=progress and sys.stderr.isatty())
    grid = save_sample_grid(load_prepared(path), root / "reports" / "data" / cfg.name / "samples.png")
    print(f"prepare: {meta['n']} {cfg.source} images at {cfg.image_size}px -> {path} in {seconds:.1f} s "
          f"({meta['n'] / seconds:.0f} images/s); grid {grid}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__.splitlines()[0])
    try:
        run(load_params(Path(args.root) / args.params, args.overrides), args.root)
    except TwinflowError as err:
        print(f"prepare: error: {err}", file=sys.stderr)
        return exit_code(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

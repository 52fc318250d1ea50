"""Compose conf/ (Hydra) into the training sections of params.yaml: model, objective, pretrain, train, encode.

    python -m flows.stages.configure [--params params.yaml] [--check] [HYDRA_OVERRIDE ...]
    e.g.  experiment=digits_cpu      trainer=ddp_cpu      objective=rcgm      train.steps=300

conf/ holds the presets and the schema; params.yaml holds the resolved values DVC tracks, key by key, so
`dvc repro` reruns exactly the stages whose values changed. This command is the one way from the first to the
second: it decides what to write, and flows/params.py's one writer changes only the keys whose values differ,
each where it stands (every other line, comments included, is kept; a section params.yaml lacks is appended under
HEADER_LINE), in one atomic write checked by re-reading. When the chosen `data` preset names another
dataset it also sets data.name, data.source and data.image_size, the keys of the data section training depends on,
optional_stages follows the result (flows/stage_use.py: which of pretrain / encode dvc.yaml declares), and
evaluate.base follows a local train.init: the many-step reference is the model TwinFlow started from (the
digits experiment fine-tunes its own fresh pretrain, so it must not be judged against the shapes base). When an
experiment sets keys of `evaluate` or `gate` (conf/experiment/sd3_tiny.yaml: its gate), those are set too.
`--check` writes nothing and exits 1 when params.yaml differs from the composition (CI and tests use it).
"""

# Lazy imports: hydra, omegaconf
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flows import stage_use
from flows.init_source import is_remote
from flows.params import apply_overrides, changed_keys, flatten, load_params, parse_overrides, with_overrides
from flows.stages._cli import stage_main
from twinflow_core.errors import ConfigError

SECTIONS = ("model", "objective", "pretrain", "train", "encode")
HEADER_LINE = (
    "# --- training: written by `python -m flows.stages.configure` from conf/ (Hydra); edit conf/ and rerun it"
)


def composed(overrides: list[str]) -> tuple[dict, dict, dict]:
    """(our sections, the data choice, {dotted key: value} of evaluate/gate keys the experiment sets)."""
    from twinflow_core.training.compose import compose
    from twinflow_core.training.config import to_dict

    sections, extra = compose(overrides)
    owned = flatten({k: extra[k] for k in ("evaluate", "gate") if extra.get(k)})
    return {name: to_dict(getattr(sections, name)) for name in SECTIONS}, extra["data"], owned


def reference_base(wanted: dict) -> str | None:
    """The evaluate.base that goes with the composed train section: its init when that is a local folder (a remote
    init is fetched by the flow, and a run from scratch keeps the base params.yaml names)."""

    init = wanted["train"].get("init")
    return None if init is None or is_remote(init) else str(init)


def changes(params: dict, wanted: dict, data: dict, owned: dict) -> dict[str, Any]:
    """{key: value} of what params.yaml must change to match the composition: our sections whole, the data keys
    params.yaml has (name, source, image_size), evaluate.base where it has one (reference_base), the evaluate/gate
    keys the experiment sets, and the optional stages' lists that follow from the result (flows/stage_use.py)."""
    edits: dict[str, Any] = {name: wanted[name] for name in SECTIONS}
    current = params.get("data") or {}
    edits.update({f"data.{k}": data[k] for k in ("name", "source", "image_size") if k in current})
    base = reference_base(wanted)
    if base is not None and "base" in (params.get("evaluate") or {}):
        edits["evaluate.base"] = base
    edits.update(owned)
    edits.update(stage_use.overrides(with_overrides(params, edits)))
    return {key: edits[key] for key in changed_keys(params, edits)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stages.configure", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if params.yaml differs; write nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=digits_cpu train.steps=300")
    args = parser.parse_args(argv)

    def body() -> int | None:
        path = Path(args.params)
        if not path.is_file():
            raise ConfigError(f"{path}: params file not found")
        params = load_params(path)
        wanted, data, owned = composed(args.overrides)
        if owned:  # the check `twinflow run KEY=VALUE` makes: a key params.yaml has, a value of its type
            items = [f"{k}={json.dumps(v)}" for k, v in owned.items()]
            owned = parse_overrides(items, params, where=str(path))
        edits = changes(params, wanted, data, owned)
        if args.check:
            if edits:
                print(
                    f"configure: {path} differs from conf/ {' '.join(args.overrides)} in: {', '.join(edits)}",
                    file=sys.stderr,
                )
                return 1
            print(f"configure: {path} matches conf/ {' '.join(args.overrides)}")
            return 0
        # one checked, atomic write; a section params.yaml lacks is appended under the line saying where it comes from
        apply_overrides(path, edits, comment=HEADER_LINE)
        print(
            f"configure: wrote {', '.join(SECTIONS)} to {path}"
            + (f" (changed: {', '.join(edits)})" if edits else " (no change)")
        )

    return stage_main("configure", body)


if __name__ == "__main__":
    sys.exit(main())

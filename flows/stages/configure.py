"""Compose conf/ (Hydra) into the training sections of params.yaml: model, objective, pretrain, train, encode.

    python -m flows.stages.configure [--params params.yaml] [--check] [HYDRA_OVERRIDE ...]
    e.g.  experiment=digits_cpu      trainer=ddp_cpu      objective=rcgm      train.steps=300

conf/ holds the presets and the schema; params.yaml holds the resolved values DVC tracks, key by key, so
`dvc repro` reruns exactly the stages whose values changed. This command is the one way from the first to the
second (other sections of params.yaml and all comments are kept). When the chosen `data` preset names another
dataset it also sets data.name, data.source and data.image_size, the keys of the data section training depends on,
optional_stages follows the result (flows/stage_use.py: which of pretrain / encode dvc.yaml declares), and
evaluate.base follows a local train.init: the many-step reference is the model TwinFlow started from (the
digits experiment fine-tunes its own fresh pretrain, so it must not be judged against the shapes base). When an
experiment sets keys of `evaluate` or `gate` (conf/experiment/sd3_tiny.yaml: its gate), those are set too.
`--check` writes nothing and exits 1 when params.yaml differs from the composition (CI and tests use it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.params import apply_overrides, edit_text, flatten, load_params, parse_overrides
from twinflow_core.errors import ConfigError, TwinflowError, exit_code

SECTIONS = ("model", "objective", "pretrain", "train", "encode")
HEADER_LINE = (
    "# --- training: written by `python -m flows.stages.configure` from conf/ (Hydra); edit conf/ and rerun it"
)


def composed_params(overrides: list[str]) -> tuple[dict, dict]:
    """(our sections, the data choice) of the composition."""
    return composed(overrides)[:2]


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
    from flows.init_source import is_remote

    init = wanted["train"].get("init")
    return None if init is None or is_remote(init) else str(init)


def differences(params: dict, wanted: dict, data: dict, owned: dict | None = None) -> list[str]:
    diffs = [name for name in SECTIONS if params.get(name) != wanted[name]]
    current = params.get("data") or {}
    diffs += [f"data.{k}" for k in ("name", "source", "image_size") if k in current and current.get(k) != data[k]]
    base = reference_base(wanted)
    if base is not None and (params.get("evaluate") or {}).get("base") != base:
        diffs.append("evaluate.base")
    flat = flatten(params)
    diffs += [k for k, v in (owned or {}).items() if flat.get(k) != v and k not in diffs]
    if not diffs:  # the optional stages' lists must follow the keys that decide them (flows/stage_use.py)
        from flows import stage_use

        diffs += sorted(stage_use.overrides(params))
    return diffs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stages.configure", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--check", action="store_true", help="exit 1 if params.yaml differs; write nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=digits_cpu train.steps=300")
    args = parser.parse_args(argv)
    try:
        path = Path(args.params)
        if not path.is_file():
            raise ConfigError(f"{path}: params file not found")
        wanted, data, owned = composed(args.overrides)
        text = path.read_text()
        diffs = differences(load_params(path), wanted, data, owned)
        if args.check:
            if diffs:
                print(
                    f"configure: {path} differs from conf/ {' '.join(args.overrides)} in: {', '.join(diffs)}",
                    file=sys.stderr,
                )
                return 1
            print(f"configure: {path} matches conf/ {' '.join(args.overrides)}")
            return 0
        path.write_text(rewrite(text, wanted, data))
        if owned:
            # the same checked, line-preserving edit as `twinflow run KEY=VALUE` (an unknown key is an error)
            items = [f"{k}={json.dumps(v)}" for k, v in owned.items()]
            apply_overrides(path, parse_overrides(items, load_params(path), where=str(path)))
        from flows import stage_use

        # the optional stages (pretrain, encode) the written train.init / train.data / evaluate.base use
        apply_overrides(path, stage_use.overrides(load_params(path)))
    except TwinflowError as err:
        print(f"configure: error: {err}", file=sys.stderr)
        return exit_code(err)
    print(
        f"configure: wrote {', '.join(SECTIONS)} to {path}"
        + (f" (changed: {', '.join(diffs)})" if diffs else " (no change)")
    )
    return 0


def rewrite(text: str, wanted: dict, data: dict) -> str:
    """params.yaml text with our sections replaced in place (appended when new), data.name/source/image_size and
    evaluate.base (reference_base) set where params.yaml has them; every other line, comments included, is kept as
    it was."""
    import re

    import yaml

    # blocks: a top-level key with its indented lines; column-0 comments belong to the key that follows them
    blocks: list[list] = [[None, []]]
    pending: list[str] = []
    for line in text.splitlines():
        top = re.match(r"^([A-Za-z_][\w-]*):", line)
        if top:
            blocks.append([top.group(1), pending + [line]])
            pending = []
        elif line.startswith("#"):
            pending.append(line)
        else:
            blocks[-1][1].extend(pending + [line])
            pending = []
    body = yaml.safe_dump({k: wanted[k] for k in SECTIONS}, sort_keys=False, default_flow_style=None, width=110)
    ours = [HEADER_LINE, *body.rstrip("\n").split("\n")]
    kept: list[str] = []
    placed = False
    for key, block in blocks:
        if key in SECTIONS:  # replaced in place (at the first of our sections), with its leading comments
            if not placed:
                kept.extend(ours)
                placed = True
            trailing = []
            while block and block[-1].strip() == "":
                trailing.append(block.pop())
            kept.extend(trailing)
            continue
        kept.extend(block)
    kept.extend(pending)
    if not placed:
        while kept and kept[-1].strip() == "":
            kept.pop()
        kept.extend(["", *ours])
    new_text = "\n".join(kept) + "\n"
    # the keys of other sections that follow the composition, each changed on its own line (flows/params.py)
    current = yaml.safe_load(new_text) or {}
    base = reference_base(wanted)
    edits = {f"data.{k}": v for k, v in data.items()}
    edits.update({} if base is None else {"evaluate.base": base})
    flat = flatten(current)
    edits = {k: v for k, v in edits.items() if k in flat and flat[k] != v}
    return edit_text(new_text, edits) if edits else new_text


if __name__ == "__main__":
    sys.exit(main())

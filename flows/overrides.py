"""Config overrides for a pipeline run: `section.key=value` strings checked against params.yaml.

An override may only change a key that params.yaml already has, with a value of a compatible type
(an int may stand for a float, nothing else converts). Checking happens before any stage runs, so a typo
fails in a second instead of after an hour of training. Applying an override rewrites params.yaml in
place (comments kept), exactly as `dvc exp run -S` does, so `dvc repro` and dvc.lock see the same values
the flow ran with.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from twinflow_core.errors import ConfigError


def load_params(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _compatible(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return True  # a null default means "unset": any value may fill it, and any may be cleared
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    if isinstance(old, int):
        return isinstance(new, int)
    if isinstance(old, str):
        return isinstance(new, str)
    return type(old) is type(new)  # lists with lists, mappings with mappings


def parse_overrides(overrides: list[str] | None, params: dict, where: str = "params.yaml") -> dict[str, Any]:
    """Check `key=value` strings against `params`; return {dotted key: parsed value} or raise ConfigError."""
    parsed: dict[str, Any] = {}
    known = flatten(params)
    sections = {k for k, v in params.items() if isinstance(v, dict)}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.steps=200")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # an unparsable value is taken as the literal string, then type-checked
        if key in sections:
            raise ConfigError(f"override {item!r}: {key!r} is a whole section of {where}; set one of its keys")
        if key not in known:
            hint = difflib.get_close_matches(key, list(known), n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"override {item!r}: unknown key {key!r} in {where}{suffix}")
        old = known[key]
        if not _compatible(old, value):
            raise ConfigError(
                f"override {item!r}: {key} is {type(old).__name__} in {where} "
                f"(now {old!r}), got {type(value).__name__}"
            )
        if isinstance(old, float) and isinstance(value, int):
            value = float(value)
        parsed[key] = value
    return parsed


def apply_overrides(path: str | Path, parsed: dict[str, Any]) -> bool:
    """Write parsed overrides into the params file, keeping its comments. Returns True if it changed."""
    if not parsed:
        return False
    from ruamel.yaml import YAML  # comes with dvc; round-trips comments and key order

    rt = YAML()
    rt.preserve_quotes = True
    path = Path(path)
    doc = rt.load(path.read_text())
    changed = False
    for key, value in parsed.items():
        node = doc
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        if node[leaf] != value:
            node[leaf] = value
            changed = True
    if changed:
        with path.open("w") as fh:
            rt.dump(doc, fh)
    return changed


def section(params: dict, name: str, defaults: dict) -> dict:
    """A params.yaml section with defaults filled in for the keys it leaves out."""
    merged = dict(defaults)
    merged.update(params.get(name) or {})
    return merged


def repo_root(workdir: str | None = None) -> Path:
    """The project checkout the stages run in: `workdir`, else the one this package lives in."""
    root = Path(workdir) if workdir else Path(__file__).resolve().parents[1]
    if not (root / "dvc.yaml").is_file():
        raise ConfigError(f"{root}: no dvc.yaml here; pass the project folder as workdir")
    return root.resolve()


def check_overrides(overrides: list[str] | None, workdir: str | None = None) -> tuple[Path, dict]:
    """Fail on a bad override (unknown key, wrong type, out of range) before anything runs; returns (root, parsed)."""
    root = repo_root(workdir)
    params = load_params(root / "params.yaml")
    parsed = parse_overrides(overrides, params, where=str(root / "params.yaml"))
    from flows.config_check import check_resolved

    # every section, ranges and cross-field rules included, by the stages' own validators; nothing written yet
    check_resolved(params, parsed, where=str(root / "params.yaml"))
    return root, parsed

"""Config overrides for a pipeline run: `section.key=value` strings checked against params.yaml.

An override may only change a key that params.yaml already has, with a value of a compatible type
(an int may stand for a float, nothing else converts). Checking happens before any stage runs, so a typo
fails in a second instead of after an hour of training. Applying an override edits the params.yaml of
the run's own workspace (never the checkout's: flows.workspace), changing only the overridden values, as
`dvc exp run --temp -S` does, so `dvc repro` and dvc.lock there see the same values the flow ran with.
"""
from __future__ import annotations

import difflib
import os
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
    """Write parsed overrides into the params file; returns True if it changed.

    Only the overridden values change: each is replaced on its own line, so comments, quoting, `null`s and
    the layout of every other key stay byte for byte. A value that does not sit on one line (a block list)
    falls back to a ruamel round trip, which keeps comments and writes nulls as `null`. Either way the result
    is re-read and must equal the old content with the overrides applied, else nothing is written. The file
    is replaced atomically (written beside it, then renamed), so an interrupted write leaves the old one."""
    if not parsed:
        return False
    path = Path(path)
    text = path.read_text()
    before = yaml.safe_load(text) or {}
    wanted = with_overrides(before, parsed)
    if wanted == before:
        return False
    new_text = _edit_lines(text, parsed)
    if new_text is None or yaml.safe_load(new_text) != wanted:
        new_text = _round_trip(text, parsed)
    if yaml.safe_load(new_text) != wanted:
        raise ConfigError(f"{path}: could not write overrides {sorted(parsed)} without changing other keys")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(new_text)
    os.replace(tmp, path)
    return True


def set_dotted(tree, parsed: dict[str, Any]) -> None:
    """Set each `a.b.c` key of `parsed` in a nested mapping (a dict or a ruamel document), in place; a missing
    or empty parent is made (a new `gate.ratio.<metric>` entry where params.yaml has no `gate.ratio` yet)."""
    for key, value in parsed.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[leaf] = value


def with_overrides(tree: dict, parsed: dict[str, Any]) -> dict:
    """A copy of the params tree with the parsed overrides set."""
    import copy

    out = copy.deepcopy(tree)
    set_dotted(out, parsed)
    return out


def _yaml_scalar(value: Any) -> str:
    """One-line YAML for a value: flow style for lists and mappings, `null` for None."""
    if value is None:
        return "null"
    dumped = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    return dumped.removesuffix("\n...").removesuffix("...").strip()


def _edit_lines(text: str, parsed: dict[str, Any]) -> str | None:
    """The text with each overridden value replaced where it stands (its key's line, up to a trailing
    comment); None when a value is not a one-line value after its key."""
    from ruamel.yaml import YAML

    doc = YAML().load(text)
    lines = text.split("\n")
    for key, value in parsed.items():
        node = doc
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
        if not hasattr(node, "lc") or leaf not in node:
            return None  # a new key has no line to edit: the round trip adds it
        key_line, _ = node.lc.key(leaf)
        val_line, val_col = node.lc.value(leaf)
        line = lines[val_line]
        if val_line != key_line:
            return None
        rest = line[val_col:]
        # the old value ends where a comment starts (" #" outside quotes) or at the end of the line
        end = _value_end(rest)
        if end is None:
            return None
        new = _yaml_scalar(value)
        tail = rest[end:]
        if tail.strip():  # keep a trailing comment in its column where the new value leaves room
            new = new.ljust(end)
        lines[val_line] = line[:val_col] + new + tail
    return "\n".join(lines)


def _value_end(rest: str) -> int | None:
    """Where a one-line YAML value ends in `rest` (before spaces and a comment); None for a multi-line one."""
    stripped = rest.rstrip()
    if stripped.endswith(("|", ">", "|-", ">-")) or stripped == "":
        return None
    quote, depth = None, 0
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "#" and i > 0 and rest[i - 1] in " \t" and depth == 0:
            return len(rest[:i].rstrip())
    if quote or depth:
        return None
    return len(stripped)


def _round_trip(text: str, parsed: dict[str, Any]) -> str:
    import io

    from ruamel.yaml import YAML  # comes with dvc; round-trips comments and key order

    rt = YAML()
    rt.preserve_quotes = True
    rt.representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null",
                                                                                     "null"))
    doc = rt.load(text)
    set_dotted(doc, parsed)
    buf = io.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()


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

"""params.yaml's reader and writer, and the one KEY=VALUE parser.

`load_params` reads the file (one-line errors: missing, not YAML, not a mapping, a NaN); `parse_overrides` checks
`section.key=value` strings against it (a key params.yaml has, a value of a compatible type: an int may stand for
a float, nothing else converts; `twinflow run`); `load_with_sets` applies a stage's `--set KEY=VALUE` through the
same parser (a stage also takes keys params.yaml leaves unset, e.g. data.source). `apply_overrides` is the one
writer: dotted keys and whole sections set in the text in place, comments and layout kept, as
`dvc exp run --temp -S` does (`twinflow run` overrides and `python -m flows.stages.configure`). `Params` is the
file as one object for the flow's process: parsed once per version of the file, overrides set in memory, the typed
gate. The types, ranges and defaults of the keys are declared in flows/schema.py; the checks across sections are
flows/config_check.py's.
"""

# Lazy imports: ruamel
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import copy
import difflib
import io
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from flows.dotted import flatten  # noqa: F401 (also imported from here)
from flows.gating import GateConfig
from twinflow_core.bounds import AliasRefused, check_numbers, load_yaml
from twinflow_core.errors import ConfigError
from twinflow_core.redaction import MASK, credential_in, redact


def split_item(item: str) -> tuple[str, str]:
    """`KEY=VALUE` -> (key, raw value text); a ConfigError naming the item otherwise."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.steps=200")
    return key.strip(), raw


def load_with_sets(path: str | Path, sets: list[str] | None = None) -> dict:
    """params.yaml as a dict, with a stage's dotted KEY=VALUE overrides applied (values parsed as YAML).

    The same parser as `twinflow run` (parse_overrides), except that a stage also takes keys params.yaml leaves
    unset (e.g. data.source): the stage's own validation checks those."""
    params = load_params(path)
    return with_overrides(params, parse_overrides(sets, params, where=str(path), unset_keys=True))


def load_params(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    check_numbers(data, str(path))  # every reader of params.yaml, stages run by DVC included
    return data


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


def parse_overrides(
    overrides: list[str] | None, params: dict, where: str = "params.yaml", unset_keys: bool = False
) -> dict[str, Any]:
    """Check `key=value` strings against `params`; return {dotted key: parsed value} or raise ConfigError.
    `unset_keys`: a key params.yaml does not have is taken as given (a stage's --set), unless it would go inside
    a value that is not a section."""
    parsed: dict[str, Any] = {}
    known = flatten(params)
    sections = {k for k, v in params.items() if isinstance(v, dict)}
    for item in overrides or []:
        key, raw = split_item(item)
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except AliasRefused as err:
            raise ConfigError(f"override {item!r}: {str(err).splitlines()[0]}") from None
        except yaml.YAMLError:
            value = raw  # an unparsable value is taken as the literal string, then type-checked
        # a credential first: every later message quotes the override, and a bare secret cannot be masked
        refuse_credentials({key: value if isinstance(value, (str, dict, list)) else raw}, "override ")
        if key in sections:
            raise ConfigError(f"override {item!r}: {key!r} is a whole section of {where}; set one of its keys")
        old = known.get(key)
        if isinstance(value, str) and (isinstance(old, float) or (unset_keys and key not in known)):
            value = _exponent_float(value)
        if key not in known:
            if not unset_keys:
                hint = difflib.get_close_matches(key, list(known), n=1)
                suffix = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"override {item!r}: unknown key {key!r} in {where}{suffix}")
            _check_place(item, key, params)  # an unset key: taken as given, the stage's validation checks it
        elif not _compatible(old, value):
            raise ConfigError(
                f"override {item!r}: {key} is {type(old).__name__} in {where} (now {old!r}), got {type(value).__name__}"
            )
        check_numbers(value, f"override {item!r}", key)  # before float(): a huge int would overflow it
        if isinstance(old, float) and isinstance(value, int):
            value = float(value)
        parsed[key] = value
    return parsed


# a float as YAML 1.2 and Python write it; YAML 1.1 (PyYAML) reads `1e-4`, without a dot, as a string
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


def _exponent_float(text: str) -> float | str:
    """`1e-4` as the float a user means (a learning rate); any other string as it was."""
    return float(text) if _FLOAT.fullmatch(text.strip()) else text


def _check_place(item: str, key: str, params: dict) -> None:
    """A ConfigError when a dotted key would go inside a value that is not a section (`train.steps.x`)."""
    node: Any = params
    for part in key.split(".")[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")


def apply_overrides(path: str | Path, parsed: dict[str, Any], comment: str | None = None) -> bool:
    """Write values into the params file; returns True if it changed. The one writer of params.yaml text: `twinflow
    run` overrides and `python -m flows.stages.configure` both call it.

    Each key of `parsed` is a dotted key (`train.steps`) or a whole section (`model`), and its value replaces what
    stands there: a mapping replaces a mapping (keys added, changed and removed), a missing key is added to its
    section, a missing section is appended at the end of the file (under `comment`, one `# ...` line, when given).
    Only what changes is rewritten (edit_text): every other line, comments included, stays byte for byte. The
    result is re-read and must equal the old content with the values set, exactly (types included, so a NaN is
    refused), else nothing is written. The file is replaced atomically (written beside it, then renamed), so an
    interrupted write leaves the old one."""
    if not parsed:
        return False
    path = Path(path)
    text = path.read_text()
    before = yaml.safe_load(text) or {}
    wanted = with_overrides(before, parsed)
    if equal_exactly(wanted, before):
        return False
    new_text = edit_text(text, before, wanted, parsed, comment)
    if new_text is None:
        raise ConfigError(f"{path}: {sorted(parsed)} would not read back as the values given; nothing written")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(new_text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; an interrupted write leaves no stray file either
    return True


def edit_text(text: str, old: dict, wanted: dict, parsed: dict[str, Any], comment: str | None = None) -> str | None:
    """YAML text (parsed: `old`) with each key of `parsed` set as apply_overrides describes, so that it reads back
    as `wanted` exactly: by line edits where the layout allows (_edit_lines: every other line byte for byte), else
    by a ruamel round trip (which keeps comments); None when neither reads back as `wanted`."""
    new_text = _edit_lines(text, old, wanted, parsed, comment)
    if new_text is not None and _reads_as(new_text, wanted):
        return new_text
    new_text = _round_trip(text, parsed, comment)
    return new_text if _reads_as(new_text, wanted) else None


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
    out = copy.deepcopy(tree)
    set_dotted(out, parsed)
    return out


def equal_exactly(a: Any, b: Any) -> bool:
    """Whether two parsed YAML values are the same, types included (1 is not 1.0 nor True) and NaN unequal to
    itself: the test a written value must pass on re-reading."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_exactly(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(equal_exactly(x, y) for x, y in zip(a, b))
    return a == b


def changed_keys(tree: dict, parsed: dict[str, Any]) -> list[str]:
    """The keys of `parsed` whose value differs from the tree's (equal_exactly), or that the tree lacks."""
    missing = object()
    changed = []
    for key, value in parsed.items():
        node = tree
        for part in key.split("."):
            node = node.get(part, missing) if isinstance(node, dict) else missing
        if node is missing or not equal_exactly(node, value):
            changed.append(key)
    return changed


def _reads_as(text: str, wanted: dict) -> bool:
    try:
        return equal_exactly(yaml.safe_load(text) or {}, wanted)
    except yaml.YAMLError:
        return False


def _yaml_scalar(value: Any) -> str:
    """One-line YAML for a value: flow style for lists and mappings, `null` for None."""
    if value is None:
        return "null"
    dumped = _yaml_dump(value, flow_style=True, width=1 << 30).strip()
    return dumped.removesuffix("\n...").removesuffix("...").strip()


def _yaml_block(key: str, value: Any, indent: int) -> list[str]:
    """`key: value` as YAML lines at `indent` columns, laid out as configure writes sections: mappings in block
    style, a list or mapping of plain values in flow style on its key's line."""
    dumped = _yaml_dump({key: value}, flow_style=None, width=110)
    return [" " * indent + line if line else line for line in dumped.rstrip("\n").split("\n")]


def _yaml_dump(data: Any, flow_style: bool | None, width: int) -> str:
    """safe_dump's text for `data`, keys in their order, never with anchors (params.yaml refuses aliases); with
    flow_style None the outer mapping is a block even when its values are all plain."""
    dumper = yaml.SafeDumper(None, default_flow_style=flow_style, sort_keys=False)
    dumper.ignore_aliases = lambda _data: True
    node = dumper.represent_data(data)
    if flow_style is None and isinstance(node, yaml.MappingNode):
        node.flow_style = False
    return yaml.serialize(node, Dumper=yaml.SafeDumper, width=width)


def _edit_lines(text: str, old: dict, wanted: dict, parsed: dict[str, Any], comment: str | None = None) -> str | None:
    """The text with only what `parsed` changes rewritten (_plan), new sections appended; None when the document
    is not a mapping. A layout line edits get wrong (a flow-style document) fails edit_text's re-read instead: the
    round trip then writes it."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    doc = YAML().load(text)
    if doc is None and old == {}:
        doc = CommentedMap()  # an empty file (or only comments): every section is new
    if not isinstance(doc, CommentedMap) or not isinstance(old, dict):
        return None
    lines = text.split("\n")
    ops: list[tuple[int, int, list[str]]] = []  # (first line, line after the last, the lines in their place)
    appended: list[str] = []
    for path in _targets(doc, old, parsed):
        node = doc
        for part in path[:-1]:
            node = node[part]
        key, value = path[-1], _dotted_get(wanted, path)
        if key in node:
            ops += _plan(node, key, _dotted_get(old, path), value, lines)
        elif node is doc:
            appended += _yaml_block(key, value, 0)
        else:  # a block mapping (_targets): the new key goes after its last one, at its indent
            line, col = node.lc.key(list(node)[-1])
            end = _block_end(lines, line, col)
            ops.append((end, end, _yaml_block(key, value, col)))
    if appended:
        end = len(lines) - 1 if lines[-1] == "" else len(lines)
        group = ([comment] if comment else []) + appended + ([] if lines[-1] == "" else [""])
        ops.append((end, end, ["", *group] if end and lines[end - 1].strip() else group))
    out: list[str] = []
    cursor = 0
    for start, end, new_lines in sorted(ops, key=lambda op: op[:2]):  # stable: insertions keep their order
        out += lines[cursor:start] + new_lines
        cursor = max(cursor, end)
    return "\n".join(out + lines[cursor:])


def _targets(doc, old: dict, parsed: dict[str, Any]) -> list[tuple[str, ...]]:
    """The paths _edit_lines writes: for each key of `parsed`, its first part the file lacks as a mapping (set_dotted
    makes the rest, so that part is written whole), raised to the nearest key whose parent is a block mapping
    (a flow mapping is rewritten on its line); a path under another one is left to it."""
    from ruamel.yaml.comments import CommentedMap

    paths: list[tuple[str, ...]] = []
    for key in parsed:
        parts = key.split(".")
        depth, node = 1, old
        while depth < len(parts) and isinstance(node.get(parts[depth - 1]), dict):
            node, depth = node[parts[depth - 1]], depth + 1
        path = tuple(parts[:depth])
        while len(path) > 1:
            parent = _dotted_get(doc, path[:-1])
            if isinstance(parent, CommentedMap) and len(parent) and not parent.fa.flow_style():
                break
            path = path[:-1]
        if path not in paths:
            paths.append(path)
    return [p for p in paths if not any(p[: len(q)] == q for q in paths if len(q) < len(p))]


def _dotted_get(tree, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _plan(node, key: str, old: Any, new: Any, lines: list[str]) -> list[tuple[int, int, list[str]]]:
    """The line edits that set `key` of a ruamel block mapping from `old` to `new`: none when equal; a block
    mapping key by key (kept, changed, removed, added after the key before it); a one-line value in place (a
    trailing comment kept); anything else rewritten as a block where it stood (the key line and its comment kept
    when the new value is a block too)."""
    from ruamel.yaml.comments import CommentedMap

    if equal_exactly(old, new):
        return []
    key_line, key_col = node.lc.key(key)
    value_line, value_col = node.lc.value(key)
    child = node[key]
    end = _block_end(lines, key_line, key_col)
    if isinstance(new, dict) and new and isinstance(child, CommentedMap) and len(child) and not child.fa.flow_style():
        ops = [
            (line, _block_end(lines, line, col), []) for line, col in (child.lc.key(k) for k in child if k not in new)
        ]
        at, col = key_line + 1, child.lc.key(next(iter(child)))[1]
        for k, value in new.items():
            if k in child:
                ops += _plan(child, k, old[k], value, lines)
                at = _block_end(lines, *child.lc.key(k))
            else:
                ops.append((at, at, _yaml_block(k, value, col)))
        return ops
    if value_line == key_line and end == key_line + 1:
        line = lines[key_line]
        rest = line[value_col:]
        stop = _value_end(rest)  # the old value ends where a comment starts (" #" outside quotes) or at the end
        if stop is not None:
            text = _yaml_scalar(new)
            tail = rest[stop:]
            if tail.strip():  # a trailing comment keeps its column: a shorter value is padded, a longer one takes
                # spaces before the comment (at least one stays), so writing the old value back restores the line
                if len(text) <= stop:
                    text = text.ljust(stop)
                else:
                    spaces = len(tail) - len(tail.lstrip(" "))
                    tail = tail[min(len(text) - stop, max(spaces - 1, 0)) :]
            return [(key_line, key_line + 1, [line[:value_col] + text + tail])]
    block = _yaml_block(key, new, key_col)
    if value_line != key_line and len(block) > 1:
        return [(key_line + 1, end, block[1:])]
    return [(key_line, end, block)]


def _block_end(lines: list[str], key_line: int, key_col: int) -> int:
    """The line after the last one of a key's value: lines indented deeper than the key (or block list entries at
    its column); blank and comment lines after its last value line belong to what follows."""
    end = key_line + 1
    for i in range(key_line + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(lines[i]) - len(lines[i].lstrip(" "))
        if indent > key_col or (indent == key_col and (stripped == "-" or stripped.startswith("- "))):
            end = i + 1
        else:
            break
    return end


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


def _round_trip(text: str, parsed: dict[str, Any], comment: str | None = None) -> str:
    from ruamel.yaml import YAML  # comes with dvc; round-trips comments and key order
    from ruamel.yaml.comments import CommentedMap

    rt = YAML()
    rt.preserve_quotes = True
    rt.representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(text)
    if doc is None:
        doc = CommentedMap()
    new = [key for key in parsed if "." not in key and key not in doc]
    set_dotted(doc, parsed)
    if comment and new:
        doc.yaml_set_comment_before_after_key(new[0], before=comment.removeprefix("#").strip())
    buf = io.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()


def section(params: dict, name: str, defaults: dict) -> dict:
    """A params.yaml section with defaults filled in for the keys it leaves out."""
    merged = dict(defaults)
    merged.update(params.get(name) or {})
    return merged


def _strings(value, key: str):
    """(dotted key, string) for every string inside a value (lists and mappings included)."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")


def _where_the_secret_goes(key: str, text: str) -> str:
    if "tracking" in key or "mlflow" in key:
        if text.lower().startswith(("http://", "https://")):
            return (
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN, the URI "
                "left without them; or the whole URI in MLFLOW_TRACKING_URI"
            )
        return "the whole URI in MLFLOW_TRACKING_URI"
    return "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN for S3, or the tool's own variable"


def refuse_credentials(values: dict[str, Any], how: str) -> None:
    """A ConfigError for the first value that carries a credential. An override and params.yaml are written into
    the run's params.yaml and its git ref (pushed when there is a git remote), and `twinflow run --tracking-uri` is
    a Prefect flow-run parameter: none of them can hold a secret, so a secret is taken from the environment only.
    The message names the key and the variable to use, never the value."""

    for key, value in values.items():
        for name, text in _strings(value, key):
            what = credential_in(text, name)
            if what:
                masked = redact(text)
                # the masked value comes last (a masked query token runs to the next space or '&'), and only where
                # masking leaves something to show: a bare secret is never printed
                shown = f"; the value, masked: {masked[:120]}" if masked not in (text, MASK) else ""
                raise ConfigError(
                    f"{how}{name} holds {what}, which a run would record (params.yaml, its git "
                    f"ref, Prefect): put the secret in the environment instead "
                    f"({_where_the_secret_goes(name, text)}){shown}"
                )


def repo_root(workdir: str | None = None) -> Path:
    """The project checkout the stages run in: `workdir`, else the current folder's (it or the nearest parent with a
    dvc.yaml), never the checkout this package happens to be installed from (an editable install of another clone
    would otherwise run, write and push there)."""
    if workdir:
        root = Path(workdir)
    else:
        cwd = Path.cwd().resolve()
        root = next((d for d in (cwd, *cwd.parents) if (d / "dvc.yaml").is_file()), cwd)
    if not (root / "dvc.yaml").is_file():
        raise ConfigError(
            f"{root}: no dvc.yaml here{'' if workdir else ' nor in a parent folder'}; run from the project "
            "folder or pass it as workdir (--workdir)"
        )
    return root.resolve()


# ---- params.yaml as one object, parsed once per process and version of the file ----

_PARSED: dict[tuple, dict] = {}  # (path, inode, size, mtime_ns) -> the checked tree of that version of the file
_PARSED_KEPT = 8  # versions remembered: a run reads two files (checkout, workspace) and writes one


def _version(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None  # no file: load_params names it
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _remember(key: tuple | None, tree: dict) -> None:
    if key is None:
        return
    _PARSED[key] = copy.deepcopy(tree)
    while len(_PARSED) > _PARSED_KEPT:
        _PARSED.pop(next(iter(_PARSED)))


@dataclass(frozen=True)
class Params:
    """A params.yaml file, parsed and checked once (`read`): the CLI's up-front check, the flow and the registration
    of one process share one parse of each version of the file (a write through `write` is remembered as the next
    version, so it is not parsed again either). `tree` is the content, with a run's overrides set in memory by
    `with_overrides`; `where` names it in errors; `gate` is the typed promotion gate. Stages are processes of their
    own and read their file once each (`load_with_sets`)."""

    path: Path
    tree: dict = field(repr=False)
    overrides: dict = field(default_factory=dict)  # set in memory on top of the file, not written

    @classmethod
    def read(cls, path: str | Path) -> Params:
        path = Path(path)
        key = _version(path)
        if key in _PARSED:
            return cls(path, copy.deepcopy(_PARSED[key]))
        tree = load_params(path)  # one-line errors: missing, not YAML, not a mapping, a NaN
        _remember(key, tree)
        return cls(path, tree)

    @property
    def where(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.path} with {shown}" if shown else str(self.path)

    def with_overrides(self, parsed: dict[str, Any]) -> Params:
        """These params with dotted keys set in memory (the file is unchanged)."""
        if not parsed:
            return self
        return Params(self.path, with_overrides(self.tree, parsed), {**self.overrides, **parsed})

    def write(self, parsed: dict[str, Any]) -> tuple[Params, bool]:
        """Set dotted keys in the file itself (`apply_overrides`: in place, comments kept, atomic, verified by
        re-reading); (the params of the written file, whether it changed)."""
        if self.overrides:
            raise ValueError(f"{self.where}: write the file's own params, not ones with overrides in memory")
        changed = apply_overrides(self.path, parsed)
        written = Params(self.path, with_overrides(self.tree, parsed))
        if changed:
            _remember(_version(self.path), written.tree)
        return written, changed

    def flat(self) -> dict[str, Any]:
        return flatten(self.tree)

    def section(self, name: str, defaults: dict) -> dict:
        return section(self.tree, name, defaults)

    @cached_property
    def gate(self) -> GateConfig:
        return GateConfig.from_params(self.tree, where=self.where)

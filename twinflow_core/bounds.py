"""Bounds every value read from a user's file or command line passes through, whatever section reads it.

- Numbers: a NaN or an infinity compares False with every bound (`not lr > 0` is the only safe spelling), so a
  range check written the usual way lets it through; and YAML reads `100000000000000000000` as a Python int that
  torch, numpy and sqlite then overflow on. `check_numbers` walks a whole parsed tree once and refuses both, and
  any key named `seed` outside numpy's 0..2**32-1 (the training seeds are mixed modulo 2**32, so a larger seed
  would silently repeat a smaller one's run).
- YAML: an alias (`*a`) repeats a whole subtree, so nine nested lines expand to a billion nodes. A params file has
  no use for them: `load_yaml` refuses aliases outright, before anything is expanded.
- Text: captions and prompts are bounded (`check_text`), and a message quotes only their first characters
  (`excerpt`), so an error stays one short line.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from twinflow_core.errors import ConfigError, DataError

INT_MAX = 2**63 - 1  # what torch, numpy and sqlite hold
SEED_MAX = 2**32 - 1  # numpy's seed range; the training seeds are mixed modulo 2**32
MAX_TEXT_CHARS = 2000  # a caption or a prompt (DPG-Bench's longest prompts are well under)
EXCERPT_CHARS = 60


def excerpt(text: str, n: int = EXCERPT_CHARS) -> str:
    """The first `n` characters of `text`, quoted, on one line ("..." after it when cut)."""
    flat = " ".join(str(text).split())
    if len(flat) <= n:
        return repr(flat)
    return f"{flat[:n]!r}..."


def number_problem(key: str, value: Any) -> str | None:
    """Why `value` (at dotted `key`) is not an acceptable number, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    if isinstance(value, int):
        if key.rsplit(".", 1)[-1] == "seed" and not 0 <= value <= SEED_MAX:
            return f"expected a seed in 0..{SEED_MAX}, got {excerpt(str(value), 24)[1:-1]}"
        if abs(value) > INT_MAX:
            return f"expected an integer within +-{INT_MAX}, got {excerpt(str(value), 24)[1:-1]}"
    return None


def check_numbers(tree: Any, where: str, prefix: str = "") -> None:
    """Raise ConfigError naming the first non-finite float or out-of-range integer anywhere in `tree`."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            check_numbers(value, where, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            check_numbers(value, where, f"{prefix}[{i}]")
    else:
        problem = number_problem(prefix, tree)
        if problem:
            raise ConfigError(f"{where}: {prefix or 'value'}: {problem}")


def check_text(text: str, what: str, error: type[Exception] = DataError, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` if it is at most `limit` characters; else `error` (one line, showing the text's start only)."""
    if len(text) > limit:
        raise error(f"{what} is {len(text)} characters (at most {limit}): {excerpt(text)}")
    return text


class AliasRefused(yaml.composer.ComposerError):
    """A YAML alias where none is accepted (a YAMLError, so a reader's 'not valid YAML' names it)."""


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(
                None, None, f"YAML aliases (*{event.anchor}) are not accepted, write the value out", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str):
    """yaml.safe_load without aliases: an alias raises yaml.YAMLError (the caller's one-line 'not valid YAML')
    at the first `*name`, before any expansion."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()

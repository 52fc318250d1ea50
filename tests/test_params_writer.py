"""params.yaml's one writer (flows/params.py apply_overrides): whole sections and dotted keys set in one checked,
atomic write that leaves every line outside what changes as it was."""

from __future__ import annotations

import pytest
import yaml

import flows.params
from flows.params import apply_overrides, equal_exactly
from twinflow_core.errors import ConfigError

TEXT = """\
# --- first: a section whose comments must stay
first:
  keep: 1            # a comment on a kept key
  # a comment between keys
  gone: [1, 2]
  change: old        # a comment on a changed key
  nested:
    a: 1
    b: 2
# --- second
second: {x: 1, y: 2}   # a flow section
third:
  items:
  - 1
  - 2
  note: null   # stays null
"""


def write(tmp_path, text=TEXT):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_a_section_is_replaced_key_by_key_and_every_other_line_stays(tmp_path):
    path = write(tmp_path)
    first = {"keep": 1, "added": {"p": [3]}, "change": "new", "nested": {"a": 1, "c": 3}}
    assert apply_overrides(path, {"first": first, "third.items": [9], "second.y": 5})
    text = path.read_text()
    wanted = yaml.safe_load(TEXT)
    wanted.update(first=first, second={"x": 1, "y": 5})
    wanted["third"]["items"] = [9]
    assert equal_exactly(yaml.safe_load(text), wanted)
    assert text == (
        "# --- first: a section whose comments must stay\n"
        "first:\n"
        "  keep: 1            # a comment on a kept key\n"
        "  added:\n"
        "    p: [3]\n"
        "  # a comment between keys\n"
        "  change: new        # a comment on a changed key\n"
        "  nested:\n"
        "    a: 1\n"
        "    c: 3\n"
        "# --- second\n"
        "second: {x: 1, y: 5}   # a flow section\n"
        "third:\n"
        "  items: [9]\n"
        "  note: null   # stays null\n"
    )


def test_a_new_key_joins_its_section_and_a_new_section_is_appended_under_the_comment(tmp_path):
    path = write(tmp_path)
    assert apply_overrides(path, {"first.nested.z": 0.5, "fourth": {"k": "v"}}, comment="# --- fourth: made here")
    text = path.read_text()
    assert "    b: 2\n    z: 0.5\n# --- second\n" in text
    assert text.endswith("  note: null   # stays null\n\n# --- fourth: made here\nfourth: {k: v}\n")
    assert text.startswith(TEXT.split("    b: 2\n")[0])


def test_writing_the_old_values_back_restores_the_file_byte_for_byte(tmp_path):
    """As configure going to another experiment and back: the same keys with other values, then the old ones."""
    path = write(tmp_path)
    old = yaml.safe_load(TEXT)
    first = {"keep": 2, "gone": [3], "change": "longer", "nested": {"a": 5, "b": 2}}
    assert apply_overrides(path, {"first": first, "second.x": 7})
    assert apply_overrides(path, {"first": old["first"], "second": old["second"]})
    assert path.read_text() == TEXT
    assert not apply_overrides(path, {"first": old["first"]})  # nothing differs: the file is not rewritten


@pytest.mark.parametrize("value", [float("nan"), float("inf") * 0])
def test_a_value_that_would_not_read_back_equal_is_refused_and_nothing_is_written(tmp_path, value):
    path = write(tmp_path)
    with pytest.raises(ConfigError, match="would not read back"):
        apply_overrides(path, {"first.keep": value})
    assert path.read_text() == TEXT and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_an_interrupted_write_leaves_the_old_file_and_no_stray_one(tmp_path, monkeypatch):
    path = write(tmp_path)

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.params.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        apply_overrides(path, {"first.keep": 5})
    assert path.read_text() == TEXT and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_layout_beyond_line_edits_goes_through_the_round_trip(tmp_path):
    """A flow-style document has no lines per key: ruamel rewrites it, and the result still reads back exactly."""
    path = write(tmp_path, "{a: 1, b: {c: 2}}  # flow\n")
    assert apply_overrides(path, {"b": {"d": 3}, "a": 1.5})
    assert equal_exactly(yaml.safe_load(path.read_text()), {"a": 1.5, "b": {"d": 3}})


def test_equal_exactly_tells_types_apart():
    assert equal_exactly({"a": [1, 2.0]}, {"a": [1, 2.0]})
    assert not equal_exactly(1, 1.0) and not equal_exactly(1, True) and not equal_exactly({"a": 1}, {"a": 1.0})
    assert not equal_exactly(float("nan"), float("nan"))

"""Caption words: the one rule that splits a caption into the words a vocabulary is made of.

Lower-case letters and digits; punctuation separates words and is dropped. This is the same rule as
`twinflow_core.text.split_words` (the training tokenizer), kept here without a torch import so that data
preparation stays light; tests/test_data_shapes.py checks that the two agree.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+")


def split_words(caption: str) -> list[str]:
    """Lower-case words and numbers of `caption`, in order."""
    return _WORD.findall(caption.lower())


def vocabulary_of(captions: Iterable[str]) -> list[str]:
    """The sorted set of words used by `captions`."""
    words: set[str] = set()
    for caption in captions:
        words.update(split_words(caption))
    return sorted(words)

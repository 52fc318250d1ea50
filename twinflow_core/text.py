"""Word tokenizer over a dataset's closed caption vocabulary: captions -> fixed-length token ids.

Id 0 is padding and doubles as the null caption (the empty string encodes to all pads), which is the
unconditional branch of classifier-free guidance. The vocabulary is data (a list of words stored with every
checkpoint in model.json), so a generator always tokenizes exactly as it was trained.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from twinflow_core.errors import DataError

PAD = "<pad>"
_WORD = re.compile(r"[a-z0-9]+")


def split_words(caption: str) -> list[str]:
    """Lower-case words and numbers; punctuation separates words and is dropped."""
    return _WORD.findall(caption.lower())


class Tokenizer:
    """Maps words to ids 1..V (0 is padding); `encode` pads or rejects captions to `max_len` tokens."""

    def __init__(self, vocabulary: Sequence[str], max_len: int = 24):
        words = list(vocabulary)
        if len(set(words)) != len(words):
            raise DataError("tokenizer vocabulary has repeated words")
        bad = [w for w in words if split_words(w) != [w]]
        if bad:
            raise DataError(f"tokenizer vocabulary entries must be single lower-case words, got {bad[:3]}")
        if max_len < 1:
            raise DataError(f"tokenizer max_len must be >= 1, got {max_len}")
        self.vocabulary = words
        self.max_len = int(max_len)
        self._ids = {w: i + 1 for i, w in enumerate(words)}

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_len: int | None = None) -> Tokenizer:
        """The sorted set of words in `captions`; max_len defaults to the longest caption."""
        seen: set[str] = set()
        longest = 1
        for caption in captions:
            words = split_words(caption)
            seen.update(words)
            longest = max(longest, len(words))
        return cls(sorted(seen), max_len if max_len is not None else longest)

    @property
    def size(self) -> int:
        """Number of ids including padding (the embedding table size)."""
        return len(self.vocabulary) + 1

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """LongTensor (N, max_len); an unknown word or an over-long caption is a DataError naming it."""
        out = torch.zeros(len(captions), self.max_len, dtype=torch.long)
        for row, caption in enumerate(captions):
            words = split_words(caption)
            if len(words) > self.max_len:
                raise DataError(f"caption {row} has {len(words)} words, more than max_len={self.max_len}: {caption!r}")
            for col, word in enumerate(words):
                idx = self._ids.get(word)
                if idx is None:
                    raise DataError(f"caption {row}: word {word!r} is not in the vocabulary ({caption!r})")
                out[row, col] = idx
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [" ".join(self.vocabulary[i - 1] for i in row.tolist() if i > 0) for row in ids]

    def null(self, n: int) -> torch.Tensor:
        """n null captions (all padding): the unconditional input."""
        return torch.zeros(n, self.max_len, dtype=torch.long)

    def to_dict(self) -> dict:
        return {"vocabulary": list(self.vocabulary), "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        return cls(d["vocabulary"], d["max_len"])

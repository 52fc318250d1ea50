"""Faults around training states: a failed write (disk full) keeps the previous state; a corrupt state is a
one-line CheckpointError naming the file and how to discard it."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from twinflow_core.errors import CheckpointError
from twinflow_core.training.callbacks import PeriodicState, check_state, latest_state, state_path


class _Trainer(SimpleNamespace):
    """What PeriodicState uses of a Lightning Trainer, with a save that can fail like a full disk."""

    def save_checkpoint(self, path, weights_only=None):
        assert weights_only is False  # a full state (optimizer, loops) for an exact resume, and no log line per save
        if self.disk_full:
            Path(path).write_bytes(b"PK\x03\x04 half a state")  # the partial file a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        torch.save({"global_step": self.global_step, "w": torch.arange(4.0)}, path)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_disk_full_while_writing_keeps_the_previous_state(tmp_path):
    trainer = _Trainer(
        global_step=10, disk_full=False, is_global_zero=True, strategy=SimpleNamespace(barrier=lambda: None)
    )
    cb = PeriodicState(tmp_path, every=10)
    cb._save(trainer)
    first = latest_state(tmp_path)
    before = _digest(first)
    trainer.global_step, trainer.disk_full = 20, True
    with pytest.raises(CheckpointError) as err:
        cb._save(trainer)
    assert "No space left on device" in str(err.value) and str(first) in str(err.value)
    assert latest_state(tmp_path) == first and _digest(first) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no partial file left behind
    check_state(first)  # and it still loads as a state
    assert torch.load(first, weights_only=True)["global_step"] == 10


@pytest.mark.parametrize("damage", ["truncate", "flip", "not-a-zip"])
def test_a_corrupt_resume_state_names_the_file_and_how_to_discard_it(tmp_path, damage):
    path = state_path(tmp_path, 30)
    torch.save({"global_step": 30, "w": torch.randn(256)}, path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF  # inside a member: only its CRC notices
    else:
        data = bytearray(b"garbage")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        check_state(path)
    message = str(err.value)
    assert message.startswith(f"{path}: resume state is corrupt") and f"rm {path}" in message and "\n" not in message

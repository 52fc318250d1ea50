"""Micro-batches of a prepared dataset, keyed (step, micro) so that the device count never changes what is
trained.

A step's global batch is `micro_per_step` micro-batches; micro-batch m of step s holds the rows at positions
[s*B + m*micro, +micro) of an endless sequence of per-epoch permutations (seeded by (seed, epoch)), and its
caption dropout is its rows of the step's draws (seeded by (seed, step)). Rank r of W, accumulating A micro-batches a step, is given
m = a*W + r. So 1 process accumulating 2 micro-batches and 2 DDP processes with 1 each see the same data, and a
resumed run continues at step s with exactly the batches the killed run would have had. Pixels here; the latent
shards' twin is twinflow_core/data/latents.py LatentMicroBatches; training/data.py wraps both for Lightning.
"""
from __future__ import annotations

import numpy as np
import torch

from twinflow_core.generator import to_data


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: distinct tuples give independent streams)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def step_rows(seed: int, step: int, micro: int, per_step: int, index: int) -> torch.Tensor:
    """Caption-dropout draws of micro-batch `index`: U(0,1) for the whole step's batch (seeded by step), its rows of
    them, so that dropout does not depend on the micro-batch size."""
    g = torch.Generator().manual_seed(mix_seed(seed, 2, step, 0))
    return torch.rand(micro * per_step, generator=g)[index * micro:(index + 1) * micro]


class MicroBatches(torch.utils.data.Dataset):
    """key (step, micro) -> {"x": (micro, 3, H, W) float, "ids": (micro, L) long, "step", "micro"}."""

    def __init__(self, images: np.ndarray, ids: torch.Tensor, micro: int, micro_per_step: int, seed: int,
                 cond_drop: float):
        self.x = to_data(images)
        self.ids = ids
        self.micro, self.per_step = micro, micro_per_step
        self.seed, self.cond_drop = int(seed), float(cond_drop)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(mix_seed(self.seed, 1, epoch))
            self._perms[epoch] = torch.randperm(len(self.x), generator=g)
        return self._perms[epoch]

    def rows(self, step: int, micro: int) -> torch.Tensor:
        n = len(self.x)
        start = (step * self.per_step + micro) * self.micro
        pos = torch.arange(start, start + self.micro)
        epochs, offsets = pos // n, pos % n
        return torch.stack([self._perm(int(e))[int(o)] for e, o in zip(epochs, offsets)])

    def __len__(self) -> int:  # not used for sampling; keys come from StepSampler
        return len(self.x)

    def __getitem__(self, key):
        step, micro = key
        idx = self.rows(step, micro)
        ids = self.ids[idx].clone()
        if self.cond_drop > 0:
            ids[step_rows(self.seed, step, self.micro, self.per_step, micro) < self.cond_drop] = 0  # the null caption
        return {"x": self.x[idx], "ids": ids, "step": step, "micro": micro}


class StepSampler(torch.utils.data.Sampler):
    """Keys (step, micro) this rank processes, from `start_step` to `steps`.

    Its length is the whole run's, from step 0, even when it starts later: the run is one Lightning epoch, and a
    resumed one restores that epoch's count of batches already done, so Lightning expects len - done more. A
    length of only what is left ended a run resumed before its half early and began a second epoch at
    start_step again, training the last steps on the first steps' batches (and a resumed state.ckpt then
    counted two epochs where the uninterrupted run has one)."""

    def __init__(self, start_step: int, steps: int, accumulate: int, rank: int, world: int):
        self.start_step, self.steps = start_step, steps
        self.accumulate, self.rank, self.world = accumulate, rank, world

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            for a in range(self.accumulate):
                yield step, a * self.world + self.rank

    def __len__(self) -> int:
        return self.steps * self.accumulate

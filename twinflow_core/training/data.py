"""Training batches over a prepared dataset, defined so that device count never changes what is trained.

A step's global batch is `micro_per_step` micro-batches; micro-batch m of step s holds the rows at positions
[s*B + m*micro, +micro) of an endless sequence of per-epoch permutations (seeded by (seed, epoch)), and its
caption dropout is seeded by (seed, step, m). Rank r of W, accumulating A micro-batches a step, is given
m = a*W + r. So 1 process accumulating 2 micro-batches and 2 DDP processes with 1 each see the same data
(and, with the module seeding the objective's noise by (seed, step, m), the same noise), and a resumed run
continues at step s with exactly the batches the killed run would have had.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch

from twinflow_core.checkpoint import to_data
from twinflow_core.text import Tokenizer


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: distinct tuples give independent streams)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


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
            g = torch.Generator().manual_seed(mix_seed(self.seed, 2, step, micro))
            ids[torch.rand(len(idx), generator=g) < self.cond_drop] = 0  # the null caption
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


class PreparedDataModule(L.LightningDataModule):
    """Loads the prepared dataset once; the dataloader starts at the trainer's (restored) global step."""

    def __init__(self, path: str, tokenizer: Tokenizer, steps: int, batch_size: int, micro: int, seed: int,
                 cond_drop: float, image_size: int):
        super().__init__()
        from twinflow_core.data.prepared import load_prepared
        from twinflow_core.errors import DataError

        self.dataset = load_prepared(path)
        size = self.dataset.images.shape[1]
        if size != image_size:
            raise DataError(f"{path}: images are {size} px but the model is built for {image_size} px "
                            f"(model.image_size; or prepare the data at that size)")
        self.tokenizer = tokenizer
        self.ids = tokenizer.encode(self.dataset.captions)
        self.steps, self.batch_size, self.micro = steps, batch_size, micro
        self.seed, self.cond_drop = seed, cond_drop

    def micro_batches(self, per_step: int):
        return MicroBatches(self.dataset.images, self.ids, self.micro, per_step, self.seed, self.cond_drop)

    def train_dataloader(self):
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        per_step = self.batch_size // self.micro
        start = self.trainer.global_step if self.trainer else 0
        data = self.micro_batches(per_step)
        sampler = StepSampler(start, self.steps, per_step // world, rank, world)
        # batch_size=None: each key already names a whole micro-batch
        return torch.utils.data.DataLoader(data, sampler=sampler, batch_size=None, num_workers=0)


class LatentDataModule(PreparedDataModule):
    """The same steps and keys over latent shards (twinflow_core/data/latents.py): rows are latents with their
    prompt embeddings, dropped captions get the null prompt's (LatentMicroBatches)."""

    def __init__(self, path: str, steps: int, batch_size: int, micro: int, seed: int, cond_drop: float):
        L.LightningDataModule.__init__(self)
        from twinflow_core.data.latents import load_latents

        self.dataset = load_latents(path)
        self.steps, self.batch_size, self.micro = steps, batch_size, micro
        self.seed, self.cond_drop = seed, cond_drop

    def micro_batches(self, per_step: int):
        from twinflow_core.data.latents import LatentMicroBatches

        return LatentMicroBatches(self.dataset, self.micro, per_step, self.seed, self.cond_drop)

"""Lightning data modules over prepared datasets and latent shards.

The batching rule (which rows a micro-batch and a rank take) lives in twinflow_core/data/batches.py."""

from __future__ import annotations

import lightning as L
import torch

from twinflow_core.data.batches import MicroBatches, StepSampler
from twinflow_core.data.latents import LatentMicroBatches, load_latents
from twinflow_core.data.prepared import load_prepared
from twinflow_core.errors import DataError
from twinflow_core.text import Tokenizer


class PreparedDataModule(L.LightningDataModule):
    """Loads the prepared dataset once; the dataloader starts at the trainer's (restored) global step."""

    def __init__(
        self,
        path: str,
        tokenizer: Tokenizer,
        steps: int,
        batch_size: int,
        micro: int,
        seed: int,
        cond_drop: float,
        image_size: int,
    ):
        super().__init__()
        self.dataset = load_prepared(path)
        size = self.dataset.images.shape[1]
        if size != image_size:
            raise DataError(
                f"{path}: images are {size} px but the model is built for {image_size} px "
                f"(model.image_size; or prepare the data at that size)"
            )
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
        self.dataset = load_latents(path)
        self.steps, self.batch_size, self.micro = steps, batch_size, micro
        self.seed, self.cond_drop = seed, cond_drop

    def micro_batches(self, per_step: int):
        return LatentMicroBatches(self.dataset, self.micro, per_step, self.seed, self.cond_drop)

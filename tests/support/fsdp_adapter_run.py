"""A few TwinFlow steps of a tiny SD3 under FSDP2 (ModelParallelStrategy) on N CPU processes; writes the loss
history and the r embedding's weights to OUT (rank 0). Run as a script: Lightning re-executes it per rank.

    python tests/support/fsdp_adapter_run.py OUT DEVICES
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(out: str, devices: int) -> None:
    import lightning as L

    from twinflow_core.adapters.tiny import tiny_transformer
    from twinflow_core.adapters.velocity import TransformerVelocity
    from twinflow_core.data.batches import StepSampler
    from twinflow_core.data.latents import LatentMicroBatches, Latents
    from twinflow_core.objective import ObjectiveConfig
    from twinflow_core.training.fsdp import ShardedTwinFlowModule, strategy

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n, steps, batch, micro = 16, 3, 8, 4
    data = Latents(
        torch.randn(n, 4, 16, 16, generator=g),
        {"prompt_embeds": torch.randn(n, 8, 32, generator=g), "pooled": torch.randn(n, 32, generator=g)},
        {"prompt_embeds": torch.zeros(1, 8, 32), "pooled": torch.zeros(1, 32)},
        [""] * n,
        {},
    )
    net = TransformerVelocity(tiny_transformer("sd3", seed=0), "sd3")
    per_step = batch // micro
    module = ShardedTwinFlowModule(
        net,
        ObjectiveConfig.preset("twinflow", enhanced_ratio=0.5),
        lr=1e-3,
        betas=(0.9, 0.99),
        weight_decay=0.0,
        ema_decay=0.0,
        grad_clip=1.0,
        seed=0,
        accumulate=per_step // devices,
        null_ids=torch.zeros(1, 1, dtype=torch.long),
    )

    class Data(L.LightningDataModule):
        batch_size = batch

        def train_dataloader(self):
            ds = LatentMicroBatches(data, micro, per_step, seed=0, cond_drop=0.25)
            sampler = StepSampler(
                0, steps, per_step // self.trainer.world_size, self.trainer.global_rank, self.trainer.world_size
            )
            return torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None)

    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy(devices),
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=Data())
    weights = {}
    for name, p in module.net.transformer.time_text_embed_2.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        weights[name] = full.detach().flatten().tolist()
    if trainer.is_global_zero:
        Path(out).write_text(json.dumps({"history": [h["loss"] for h in module.history], "r_embed": weights}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

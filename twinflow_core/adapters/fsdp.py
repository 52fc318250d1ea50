"""FSDP2 for adapted transformers: Lightning's ModelParallelStrategy with torch's `fully_shard`.

Lightning's FSDPStrategy refuses `accelerator="cpu"`; ModelParallelStrategy runs FSDP2 on CPU gloo processes as
well as on GPUs, so the same preset is testable here. Each transformer block is its own shard unit (one
all-gather per block), the rest (embeddings, the r embedding, the output layer) is the root unit. As in the
official Qwen-Image FSDP run, no EMA copy is kept (ema_decay 0: the online model is the teacher).
"""
from __future__ import annotations

from twinflow_core.training.module import TwinFlowModule

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def shard(net, mesh) -> None:
    """fully_shard each transformer block of net.transformer, then net itself, on the 1-D data-parallel mesh."""
    from torch.distributed.fsdp import fully_shard

    for attr in BLOCK_LISTS:
        for block in getattr(net.transformer, attr, None) or []:
            fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)


class ShardedTwinFlowModule(TwinFlowModule):
    """TwinFlowModule whose net is sharded by FSDP2 when Lightning builds the model (ModelParallelStrategy)."""

    def configure_model(self):
        if getattr(self, "_sharded", False):
            return
        shard(self.net, self.device_mesh["data_parallel"])
        self._sharded = True


def strategy(devices: int):
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1, save_distributed_checkpoint=False)

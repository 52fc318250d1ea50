"""FSDP2 training of adapted transformers: Lightning's ModelParallelStrategy with torch's `fully_shard`.

Lightning's FSDPStrategy refuses `accelerator="cpu"`; ModelParallelStrategy runs FSDP2 on CPU gloo processes as
well as on GPUs, so the same preset is testable here. The shard units are twinflow_core/adapters/fsdp.py's. As in
the official Qwen-Image FSDP run, no EMA copy is kept (ema_decay 0: the online model is the teacher).
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy

from twinflow_core.adapters.fsdp import shard
from twinflow_core.training.module import TwinFlowModule


class ShardedTwinFlowModule(TwinFlowModule):
    """TwinFlowModule whose net is sharded by FSDP2 when Lightning builds the model (ModelParallelStrategy)."""

    def configure_model(self):
        if getattr(self, "_sharded", False):
            return
        shard(self.net, self.device_mesh["data_parallel"])
        self._sharded = True


def strategy(devices: int) -> ModelParallelStrategy:
    return ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1, save_distributed_checkpoint=False)

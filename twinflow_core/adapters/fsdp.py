"""FSDP2 shard units of an adapted transformer: each transformer block is its own unit (one all-gather per block),
the rest (embeddings, the r embedding, the output layer) is the root unit. The training side (Lightning's
ModelParallelStrategy, the sharded module) is twinflow_core/training/fsdp.py."""

from __future__ import annotations

from torch.distributed.fsdp import fully_shard

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def shard(net, mesh) -> None:
    """fully_shard each transformer block of net.transformer, then net itself, on the 1-D data-parallel mesh."""
    for attr in BLOCK_LISTS:
        for block in getattr(net.transformer, attr, None) or []:
            fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)

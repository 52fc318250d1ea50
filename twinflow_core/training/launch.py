"""Which launcher started this process, and the placement it decided: the environment chooses, not the stage.

    Lightning's own launcher   `python -m flows.stages.train` on one node; Lightning spawns trainer.devices
                               local ranks itself (the config's devices / num_nodes are used as written)
    torchrun / TorchElastic    `torchrun --nnodes N --nproc-per-node D -m flows.stages.train` (what a Kubeflow
                               PyTorchJob runs: torchrun reads its PET_* variables); WORLD_SIZE, LOCAL_WORLD_SIZE
                               and GROUP_RANK give the placement
    SLURM                      `srun python -m flows.stages.train` inside an sbatch job; SLURM_NNODES and
                               SLURM_NTASKS_PER_NODE give the placement (Lightning's SLURMEnvironment)

dvc.lock records the stage command, so a cluster run must not need another one: the same
`python -m flows.stages.train` learns from its environment how many nodes and processes it belongs to, and the
trainer section in params.yaml only says what to use when no external launcher is present. The placement does
not change what is trained (data.py: the global batch and its order are fixed by batch_size and the seed), so
the run key and the checkpoint are the same on one process or on many.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace

from twinflow_core.errors import ConfigError
from twinflow_core.training.config import micro_rows

LAUNCH_ID_ENV = "TWINFLOW_LAUNCH_ID"  # set by the first process of a Lightning-launched run; its children inherit it


@dataclass(frozen=True)
class Launch:
    launcher: str  # "lightning", "torchrun" or "slurm"
    num_nodes: int
    devices: int  # processes per node
    node_rank: int
    local_rank: int
    global_rank: int
    launch_id: str  # the same in every process of this launch on this node, new for the next launch

    @property
    def external(self) -> bool:
        return self.launcher != "lightning"

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices


def _int(env, key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None:
        if default is None:
            raise ConfigError(f"launcher environment: {key} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"launcher environment: {key}={value!r} is not an integer") from None


def _is_torchelastic(env) -> bool:
    # the variables Lightning's TorchElasticEnvironment.detect() looks for
    return all(k in env for k in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def _is_slurm_task(env) -> bool:
    # as Lightning's SLURMEnvironment: an srun task of a batch job (job name bash/interactive = not managed)
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive") and "SLURM_PROCID" in env


def detect(devices: int, num_nodes: int, env=None) -> Launch:
    """The launch this process belongs to; `devices` and `num_nodes` (the trainer config) apply only when no
    external launcher set the placement. Without one, a launch id is put into os.environ so that the local ranks
    Lightning spawns later inherit it."""
    env = os.environ if env is None else env
    if _is_torchelastic(env):
        local_world = _int(env, "LOCAL_WORLD_SIZE")
        world = _int(env, "WORLD_SIZE")
        if world % local_world:
            raise ConfigError(
                f"torchrun: WORLD_SIZE {world} is not a multiple of LOCAL_WORLD_SIZE {local_world} "
                "(nodes with different --nproc-per-node are not supported)"
            )
        # the torchrun agent is the parent of every local rank: unique per node and per launch
        lid = (
            f"torchrun:{env.get('TORCHELASTIC_RUN_ID', 'none')}:{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
            f":{os.getppid()}"
        )
        return Launch(
            "torchrun",
            world // local_world,
            local_world,
            _int(env, "GROUP_RANK"),
            _int(env, "LOCAL_RANK"),
            _int(env, "RANK"),
            lid,
        )
    if _is_slurm_task(env):
        if "SLURM_NTASKS_PER_NODE" not in env and _int(env, "SLURM_NTASKS") > 1:
            raise ConfigError("SLURM: set --ntasks-per-node (= trainer devices per node), not only --ntasks")
        per_node = _int(env, "SLURM_NTASKS_PER_NODE", 1)
        lid = f"slurm:{env.get('SLURM_JOB_ID')}:{env.get('SLURM_STEP_ID', '0')}:{env.get('SLURM_RESTART_COUNT', '0')}"
        return Launch(
            "slurm",
            _int(env, "SLURM_NNODES", 1),
            per_node,
            _int(env, "SLURM_NODEID", 0),
            _int(env, "SLURM_LOCALID", 0),
            _int(env, "SLURM_PROCID"),
            lid,
        )
    if LAUNCH_ID_ENV not in env:
        env[LAUNCH_ID_ENV] = f"lightning:{uuid.uuid4().hex}"
    local, node = _int(env, "LOCAL_RANK", 0), _int(env, "NODE_RANK", 0)
    return Launch("lightning", num_nodes, devices, node, local, node * devices + local, env[LAUNCH_ID_ENV])


def placement(trainer_cfg, launch: Launch):
    """The trainer config with devices / num_nodes as the launcher decided (and DDP when that is > 1 process)."""
    if not launch.external:
        return trainer_cfg
    strategy = trainer_cfg.strategy
    if strategy == "auto" and launch.world_size > 1:
        strategy = "ddp"
    return replace(trainer_cfg, devices=launch.devices, num_nodes=launch.num_nodes, strategy=strategy)


def micro_batch_for(batch_size: int, micro_batch: int, world: int, where: str) -> int:
    """Rows per forward on the launcher's `world` processes (config.micro_rows), checked as the config is."""
    micro = micro_rows(batch_size, micro_batch, world)
    if micro < 1 or batch_size % (world * micro):
        raise ConfigError(
            f"{where}: batch_size {batch_size} does not split over the launcher's {world} "
            f"processes in micro-batches of {micro} rows; set {where}.micro_batch "
            f"or batch_size to fit"
        )
    return micro

"""The LightningModule: wires objective + net + EMA + optimiser; the method itself is twinflow_core.objective.

Manual optimisation, one micro-batch per `training_step` (see data.py for what a micro-batch is):
- the objective's noise is seeded by (seed, step) and drawn for the whole global batch, of which each micro-batch
  takes its rows (with the batch's partition into buckets and bucket means over the batch's rows): the result
  does not depend on the micro-batch size, nor on how micro-batches are spread over devices and accumulation;
- the grad-carrying forward and all the objective's no-grad calls go to the plain `self.net` inside this
  module's forward (which is what DDP wraps): DDP's hooks run once per micro-batch, on one backward;
- the EMA is updated once per optimiser step, on the step's first micro-batch, right after the grad forward
  (where the official step updates it), and then serves as the teacher;
- after the last micro-batch: gradients nan_to_num'd, clipped to norm `grad_clip`, AdamW step, the learning-rate
  schedule's step (lr_factor) and, when asked for, the export average's update (a second EMA, not the teacher);
  then a non-finite loss or weight stops training (NonFiniteStep) before any state or export is written.
The EMA copy is a plain attribute, not a submodule: DDP/FSDP neither sync nor shard it, and it is saved
through on_save_checkpoint together with the RNG state.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time

import lightning as L
import numpy as np
import torch

from twinflow_core.data.batches import mix_seed
from twinflow_core.ema import EMA
from twinflow_core.errors import CheckpointError
from twinflow_core.objective import ObjectiveConfig, sanitize_and_clip_grads_
from twinflow_core.objectives import build_objective


class NonFiniteStep(CheckpointError):
    """Training reached a non-finite loss or weight at `step` (training/run.py names the state kept)."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step, self.reason = step, reason


def canonical_state(obj):
    """`obj` in fresh containers with interned strings, so that its pickle (a resume state, state.ckpt) depends
    on its content only. Pickle writes an object seen before as a reference: equal strings that are one object
    (the literal 'step' of torch's Adam) cost a reference, equal ones that are not (the same key unpickled from
    the state a resumed run started from) are written again, so a resumed run's state.ckpt differed from the
    uninterrupted run's in bytes (53 of 99 kB) though not in any value. Tensors are kept as they are; dict
    subclasses keep their attributes (a module state_dict's _metadata)."""

    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        items = [(canonical_state(k), canonical_state(v)) for k, v in obj.items()]
        fresh = copy.copy(obj)
        fresh.clear()
        fresh.update(items)
        return fresh
    if isinstance(obj, list):
        return [canonical_state(v) for v in obj]
    if type(obj) is tuple:
        return tuple(canonical_state(v) for v in obj)
    return obj


def lr_factor(step: int, steps: int, schedule: str, warmup: int) -> float:
    """The multiple of the base lr used by optimiser step `step` (0-based) of `steps`: a linear rise over the
    first `warmup` steps, then 1 (constant) or a fall towards 0 after the last step (cosine, linear)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


class _StepEMA:
    """The EMA as the objective sees it: updates only when `active` (the first micro-batch of a step)."""

    def __init__(self, ema: EMA, active: bool):
        self.ema, self.active = ema, active
        self.decay = ema.decay

    def update(self, online):
        if self.active:
            self.ema.update(online)

    def teacher(self, online):
        return self.ema.teacher(online)


class TwinFlowModule(L.LightningModule):
    def __init__(
        self,
        net: torch.nn.Module,
        objective: ObjectiveConfig,
        *,
        lr: float,
        betas,
        weight_decay: float,
        ema_decay: float,
        grad_clip: float,
        seed: int,
        accumulate: int,
        null_ids: torch.Tensor,
        teacher=None,
        steps: int = 1,
        lr_schedule: str = "constant",
        lr_warmup: int = 0,
        export_ema_decay: float = 0.0,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.objective = build_objective(objective)  # the registered method of this config
        # `teacher`: any object with EMA's interface (e.g. twinflow_core.adapters.lora.LoraTeacher, whose EMA is
        # a second adapter inside the net); default the EMA copy / online / frozen copy of twinflow_core.ema
        self.ema = teacher if teacher is not None else EMA(net, ema_decay)
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.steps, self.lr_schedule, self.lr_warmup = steps, lr_schedule, lr_warmup
        # the exported weights' own average (StageConfig.export_ema_decay); None: export the teacher
        self.export_ema = EMA(net, export_ema_decay) if export_ema_decay > 0 else None
        self.grad_clip, self.seed, self.accumulate = grad_clip, seed, accumulate
        self.register_buffer("null_ids", null_ids[:1].clone(), persistent=False)
        self.history: list[dict] = []  # per optimiser step: the global mean of each loss term
        self._stats: dict[str, float] = {}
        self._t_step = None
        self.step_seconds: list[float] = []  # wall time of each optimiser step of this run (not restored)
        self.run_key = ""  # set by training.run.fit; saved in every state (callbacks.RUN_KEY_FIELD)

    # -- the weights a generator should use: the export average, else the EMA copy when there is one
    def generator_net(self) -> torch.nn.Module:
        if self.export_ema is not None:
            return self.export_ema.model
        if self.exports_online_weights():
            return self.net
        return self.ema.teacher(self.net)

    def exports_online_weights(self) -> bool:
        """No average to export: no EMA (decay 0), or a frozen teacher (decay 1), which is the initial model (a
        frozen copy, or a LoRA net's disabled adapter) and only the CFG target's teacher; its export was the base
        itself, unchanged by the run. Decided by the decay, not by `ema.model`: a LoRA teacher keeps its average
        inside the net and has no copy."""
        return self.export_ema is None and self.ema.decay in (0.0, 1.0)

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]  # LoRA: the adapter only
        opt = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant" and not self.lr_warmup:
            return opt  # no scheduler: the step and its resume state as before schedules existed
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, self.steps, self.lr_schedule, self.lr_warmup)
        )
        return [opt], [schedule]  # Lightning saves and restores its state; manual optimisation steps it

    def on_fit_start(self):
        for average in (self.ema, self.export_ema):
            if average is not None and average.model is not None:
                average.model.to(self.device)

    def training_step(self, batch, batch_idx):
        step, micro = int(batch["step"]), int(batch["micro"])
        local = micro // self.trainer.world_size  # this micro-batch's place in the rank's accumulation
        if local == 0:
            self._stats, self._t_step = {}, time.perf_counter()
        # seeded per step, not per micro-batch: the objective draws the whole global batch's noise and takes this
        # micro-batch's rows of it (rows=), so the step does not depend on the split over micro-batches and ranks
        torch.manual_seed(mix_seed(self.seed, 3, step, 0))
        x, ids = batch["x"], batch.get("cond", batch.get("ids"))  # latent batches carry prompt-embedding dicts
        uncond = batch["uncond"] if "uncond" in batch else self.null_ids.expand(len(ids), -1)
        rows = len(x)
        loss, stats = self.objective(
            self.net,
            x,
            ids,
            uncond=uncond,
            ema=_StepEMA(self.ema, local == 0),
            rows=(micro * rows, rows * self.accumulate * self.trainer.world_size),
        )
        self.manual_backward(loss / self.accumulate)
        for k, v in stats.items():
            self._stats[k] = self._stats.get(k, 0.0) + v / self.accumulate
        if local == self.accumulate - 1:
            self._optimizer_step()

    def _optimizer_step(self):
        opt = self.optimizers()
        strategy = type(self.trainer.strategy).__name__.lower()
        if "fsdp" in strategy:  # sharded grads: FSDP's own norm
            for p in self.net.parameters():
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
            grad_norm = float(self.trainer.strategy.model.clip_grad_norm_(self.grad_clip))
        else:
            grad_norm = sanitize_and_clip_grads_(self.net.parameters(), self.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - self._t_step
        self.step_seconds.append(seconds)
        stats = dict(self._stats)
        if self.trainer.world_size > 1:  # global means, as a single process would have computed them
            keys = sorted(stats)
            t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
            t = self.trainer.strategy.reduce(t, reduce_op="mean")
            stats = dict(zip(keys, t.tolist()))
        rows = self.trainer.datamodule.batch_size if self.trainer.datamodule else 0
        stats.update({"grad_norm": grad_norm, "lr": opt.param_groups[0]["lr"]})  # the lr this step used
        schedule = self.lr_schedulers()
        if schedule is not None:
            schedule.step()
        if self.export_ema is not None:
            self.export_ema.update(self.net)
        # the history (train_log.json, the resume state) holds what the same inputs reproduce bitwise; the
        # wall-clock figures go to the logger (MLflow) and step_seconds only
        self.history.append({"step": int(self.trainer.global_step), **stats})
        self._stop_if_not_finite(float(stats["loss"]))
        perf = {"perf/sec_per_step": seconds, "perf/samples_per_sec": rows / max(seconds, 1e-9)}
        self.log("loss", float(stats["loss"]), prog_bar=True, logger=False, on_step=True, batch_size=rows or 1)
        # to the logger (MLflow) once per optimiser step, at that step: Lightning's own flush runs at every batch
        # end, and with manual optimisation over several micro-batches it would log a step's values again at
        # the next micro-batch, on a micro-batch counter
        step, every = int(self.trainer.global_step), max(int(self.trainer.log_every_n_steps), 1)
        if self.loggers and self.global_rank == 0 and (step % every == 0 or step == self.trainer.max_steps):
            for logger in self.loggers:
                logger.log_metrics({k: float(v) for k, v in {**stats, **perf}.items()}, step=step)

    def _stop_if_not_finite(self, loss: float) -> None:
        """Stop at the first step whose loss or updated weights are not finite. The gradients' nan_to_num (the
        official step) keeps a stray non-finite entry from poisoning a step; it must not hide a model that is NaN
        all through. Raised before this step's callbacks, so no resume state and no export holds the bad weights.
        Only reads: the weights and every RNG stay as they were."""
        reason = f"the loss is {loss}" if not math.isfinite(loss) else None
        if reason is None:
            # the trained ones only: frozen weights do not change, and a NaN among them makes the loss NaN
            params = [
                (n, p.to_local() if hasattr(p, "to_local") else p)
                for n, p in self.net.named_parameters()
                if p.requires_grad
            ]
            ok = torch.stack([torch.isfinite(p.detach()).all() for _, p in params] or [torch.tensor(True)]).float()
            if self.trainer.world_size > 1:  # FSDP shards differ; every rank takes part and agrees
                ok = self.trainer.strategy.reduce(ok, reduce_op="mean")
            if not bool((ok == 1).all()):
                reason = f"weight {params[int((ok < 1).nonzero()[0])][0]} is not finite"
        if reason is not None:
            raise NonFiniteStep(int(self.trainer.global_step), reason)

    # -- state that Lightning does not know about: EMA, RNG, loss history
    def on_save_checkpoint(self, checkpoint):
        checkpoint["ema"] = self.ema.state_dict()
        if self.export_ema is not None:
            checkpoint["export_ema"] = self.export_ema.state_dict()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": list(np.random.get_state()[1].tolist()),
            "numpy_pos": int(np.random.get_state()[2]),
            "python": random.getstate()[1],
        }
        checkpoint["history"] = self.history
        if self.run_key:  # whose state this is: a resume (or SLURM requeue) of another key refuses it
            checkpoint["twinflow_run_key"] = self.run_key
        # last of Lightning's hooks on the dict it is about to save: every part of it, canonical (see canonical_state)
        for key in list(checkpoint):
            checkpoint[key] = canonical_state(checkpoint[key])

    def on_load_checkpoint(self, checkpoint):
        self.ema.load_state_dict(checkpoint["ema"])
        if self.export_ema is not None:
            self.export_ema.load_state_dict(checkpoint["export_ema"])
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
            random.setstate((3, tuple(rng["python"]), None))
        self.history = list(checkpoint.get("history", []))

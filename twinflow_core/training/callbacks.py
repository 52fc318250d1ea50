"""Training callbacks: resumable state every N steps, 1-NFE sample grids, the final generator export, and
plain progress lines where no progress bar can be drawn (logs, Prefect task output).

States are written to a temporary file and renamed into place, so a run killed mid-write (SIGKILL) leaves the
previous state intact; the newest two are kept.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from twinflow_core.errors import CheckpointError
from twinflow_core.nets.generator import save_generator
from twinflow_core.sampler import euler, sample
from twinflow_core.viz import save_image_grid

STATE_GLOB = "step-*.ckpt"


def state_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.ckpt"


# Lightning's SLURM requeue checkpoint (written on SIGUSR1, `--signal=SIGUSR1@...` in the sbatch template) into the
# trainer's default_root_dir, which fit() sets to the run's own resume folder <resume_dir>/<stage>-<key>/
HPC_GLOB = "hpc_ckpt_*.ckpt"
RUN_KEY_FIELD = "twinflow_run_key"  # in every state and requeue checkpoint (TwinFlowModule.on_save_checkpoint)


def latest_state(directory: Path) -> Path | None:
    states = sorted(Path(directory).glob(STATE_GLOB)) if Path(directory).is_dir() else []
    return states[-1] if states else None


def _peek(path: Path) -> dict:
    """The checkpoint's top-level entries, tensors memory-mapped (nothing copied, no pickled objects trusted); a
    state the safe loader refuses (crafted, or not ours) is a CheckpointError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(
            f"{path}: resume state refused by the safe loader ({first}); delete it (rm {path}) to "
            f"resume from the one before, or its folder to start the stage over"
        ) from None


def resume_point(directory: Path) -> Path | None:
    """The state a run resumes from: the newer (by optimiser step) of the latest periodic state and the SLURM
    requeue checkpoints in its own folder; a requeue checkpoint that will not load is left to check_state."""
    directory = Path(directory)
    state = latest_state(directory)
    best, best_step = state, int(state.stem.split("-")[1]) if state else -1
    for hpc in sorted(directory.glob(HPC_GLOB)) if directory.is_dir() else []:
        try:
            step = int(_peek(hpc).get("global_step", -1))
        except Exception:  # noqa: BLE001 - a torn file: check_state names it
            return hpc
        if step > best_step:
            best, best_step = hpc, step
    return best


def check_run_key(path: Path, key: str) -> None:
    """Refuse a state saved by another run key: resuming it would hand this run another configuration's weights
    and steps. (States from before the key was recorded carry none and are taken: their folder names the key.)"""
    stored = _peek(path).get(RUN_KEY_FIELD)
    if stored is not None and stored != key:
        raise CheckpointError(
            f"{path}: a resume state of run key {stored}, not of this run ({key}): refused; "
            f"remove it (rm {path}) to start this run afresh"
        )


def check_state(path: Path) -> Path:
    """A resume state must be a whole torch zip archive (every member's CRC checked, nothing unpickled); else a
    CheckpointError naming the file and how to discard it, instead of a traceback from deep inside Lightning."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        bad = f"{type(err).__name__}: {err}"
    if bad is not None:
        raise CheckpointError(
            f"{path}: resume state is corrupt ({bad}); delete it (rm {path}) to resume from the "
            f"one before, or the folder {path.parent} to start the stage over"
        )
    return path


class ProgressLines(L.Callback):
    """One line every `every` steps (step, seconds per step, time left): the progress bar's stand-in in logs."""

    def __init__(self, label: str, total: int, every: int):
        self.label, self.total, self.every = label, total, max(int(every), 1)
        self.start = None
        self.last = None  # with micro-batches a step ends several batches: one line per step

    def on_train_start(self, trainer, pl_module):
        self.start = (trainer.global_step, time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if (step % self.every and step != self.total) or step == self.last:
            return
        self.last = step
        done = step - self.start[0]
        per_step = (time.perf_counter() - self.start[1]) / max(done, 1)
        print(
            f"{self.label}: step {step}/{self.total}, {per_step:.2f} s/step, "
            f"~{per_step * (self.total - step) / 60:.1f} min left",
            flush=True,
        )


class PeriodicState(L.Callback):
    """Full training state (weights, optimiser, EMA, RNG, step) every `every` steps and at the end."""

    def __init__(self, directory: str | Path, every: int, keep: int = 2):
        self.directory, self.every, self.keep = Path(directory), every, keep

    def _save(self, trainer: L.Trainer):
        step = trainer.global_step
        final = state_path(self.directory, step)
        if final.exists():
            return
        tmp = final.with_suffix(".tmp")
        try:
            # collective: every rank calls it, rank 0 writes. weights_only=False said outright: an exact resume needs
            # the optimizer, loops and callbacks too, and left unset Lightning logs a line at every save
            trainer.save_checkpoint(tmp, weights_only=False)
        except OSError as err:  # disk full, quota, a vanished mount: the previous state is untouched
            tmp.unlink(missing_ok=True)
            kept = latest_state(self.directory)
            raise CheckpointError(
                f"{tmp}: writing the training state failed ({err.strerror or err}); "
                f"the previous state {kept or '(none yet)'} is intact: free space and rerun "
                f"to resume from it"
            ) from None
        if trainer.is_global_zero:
            os.replace(tmp, final)
            for old in sorted(self.directory.glob(STATE_GLOB))[: -self.keep]:
                old.unlink()
        trainer.strategy.barrier()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last_micro = int(batch["micro"]) // trainer.world_size == pl_module.accumulate - 1
        if last_micro and trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module):
        self._save(trainer)


class SampleGrid(L.Callback):
    """Captioned grids from the generator weights (EMA): 1 NFE, plus `euler_steps` Euler steps when > 0 (the
    flow-matching base, whose 1 NFE is then one Euler step).

    Written to <out>/samples/step-XXXXXXXX-<sampler>.png every `every` steps (0: only at the end); each path is
    also passed to `on_grid(path, step)` hooks (the stage entry points log them to MLflow).

    `keep` (the run's resume folder) holds a copy of each grid: a run resumed after a kill, or one that only
    re-exports from its final state (`dvc repro` deletes the stage's outputs first), cannot redraw the grids of
    steps it did not run, so it puts the kept ones back and its output folder is the uninterrupted run's."""

    def __init__(
        self,
        out: str | Path,
        captions: list[str],
        tokenizer,
        every: int = 0,
        euler_steps: int = 0,
        seed: int = 0,
        on_grid: list[Callable] | None = None,
        keep: str | Path | None = None,
    ):
        self.out, self.captions, self.tokenizer = Path(out) / "samples", captions, tokenizer
        self.keep = Path(keep) if keep is not None else None
        self.every, self.euler_steps, self.seed = every, euler_steps, seed
        self.on_grid = on_grid or []
        self.paths: list[Path] = []
        self.done = False

    @torch.no_grad()
    def _grid(self, trainer, pl_module):
        if not trainer.is_global_zero or "fsdp" in type(trainer.strategy).__name__.lower():
            return
        net = pl_module.generator_net()
        was_training = net.training
        net.eval()
        step = trainer.global_step
        g = torch.Generator().manual_seed(self.seed)
        size, ch = net.image_size, net.in_channels
        z = torch.randn(len(self.captions), ch, size, size, generator=g).to(pl_module.device)
        ids = self.tokenizer.encode(self.captions).to(pl_module.device)
        if self.euler_steps:  # a flow-matching model: its 1-NFE sample is one Euler step (r = t), not a jump
            runs = [("1nfe", lambda: euler(net, z, ids, steps=1))]
        else:
            runs = [("1nfe", lambda: sample(net, z, ids, nfe=1, generator=g))]
        if self.euler_steps:
            runs.append((f"euler{self.euler_steps}", lambda: euler(net, z, ids, steps=self.euler_steps)))
        self.out.mkdir(parents=True, exist_ok=True)
        for name, run in runs:
            path = self.out / f"step-{step:08d}-{name}.png"
            save_image_grid(run(), path, captions=self.captions, ncol=8, title=f"step {step}, {name} (EMA weights)")
            if self.keep is not None:
                self.keep.mkdir(parents=True, exist_ok=True)
                tmp = self.keep / f".{path.name}.tmp"
                shutil.copyfile(path, tmp)
                os.replace(tmp, self.keep / path.name)  # a kill mid-copy leaves no half grid to restore
            self.paths.append(path)
            for hook in self.on_grid:
                hook(path, step)
        net.train(was_training)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last_micro = int(batch["micro"]) // trainer.world_size == pl_module.accumulate - 1
        if self.every and last_micro and trainer.global_step % self.every == 0:
            self._grid(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.done = True
        if not self.paths or f"step-{trainer.global_step:08d}" not in self.paths[-1].name:
            self._grid(trainer, pl_module)
        if self.keep is not None and trainer.is_global_zero and self.keep.is_dir():
            # grids of the steps a resumed run did not run itself; only steps up to this run's end
            for kept in sorted(self.keep.glob("step-*.png")):
                step = int(kept.name.split("-")[1])
                if step <= trainer.global_step and not (self.out / kept.name).exists():
                    self.out.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(kept, self.out / kept.name)


class ExportGenerator(L.Callback):
    """At the end: the generator weights (EMA copy, or the gathered online weights without one) as safetensors
    + model.json in `out`, and the loss history as train_log.json."""

    def __init__(self, out: str | Path, net_name: str, net_kwargs: dict, tokenizer, extra: dict):
        self.out, self.net_name, self.net_kwargs = Path(out), net_name, net_kwargs
        self.tokenizer, self.extra = tokenizer, extra
        self.done = False

    def on_train_end(self, trainer, pl_module):
        self.done = True
        net = pl_module.generator_net()
        online = pl_module.exports_online_weights()
        if online:
            # online weights; under FSDP this gathers the full state on rank 0 (every rank must call it)
            full = trainer.strategy.lightning_module_state_dict()
            state = {k[len("net.") :]: v for k, v in full.items() if k.startswith("net.")}
        if not trainer.is_global_zero:
            return
        if online:
            net = copy.deepcopy(pl_module.net).cpu()
            net.load_state_dict(state)
        extra = {**self.extra, "steps": trainer.global_step}
        save_generator(self.out, net, self.net_name, self.net_kwargs, self.tokenizer, extra)
        (self.out / "train_log.json").write_text(json.dumps(pl_module.history, indent=1))

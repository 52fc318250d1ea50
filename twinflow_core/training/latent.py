"""What training a pretrained diffusers model (twinflow_core/adapters) adds to the training parts (parts.py): the
net from the base pipeline (full: a second, gated r embedding; LoRA: a peft adapter on the native embedding fed
t - r/2), its teacher rule, the latent-shard batches, and the export as a diffusers pipeline folder. The objective,
the Lightning module, the resumable state and the trainer are those of in-house training (parts.py, run.py's fit),
unchanged.

Teacher rules (official): full with 0 < ema_decay < 1: the EMA copy; ema_decay 0 (FSDP): the online model;
LoRA: the "ema" adapter, the online adapter (0), or the frozen base with adapters disabled (1).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from twinflow_core.adapters.codec import load_pipeline
from twinflow_core.adapters.generator_files import META, generator_meta, save_latent_generator
from twinflow_core.adapters.lora import EMA_ADAPTER, TRAIN, LoraTeacher, add_lora
from twinflow_core.adapters.velocity import TransformerVelocity, load_transformer, load_velocity
from twinflow_core.errors import DataError
from twinflow_core.loader import is_latent


@dataclass
class LatentParts:
    net: torch.nn.Module
    teacher: object  # None: fit's EMA rule (twinflow_core.ema.EMA); LoraTeacher for LoRA
    pipe: object  # the base pipeline (text encoders, tokenizers, VAE, scheduler) for the export
    base_meta: dict


def build_net(init: str, model, seed: int, ema_decay: float, r_embed_init: str = "keep") -> LatentParts:
    """The trainable TransformerVelocity from the base generator folder `init` (generator_files.wrap_base's
    output, or a generator this project trained) as `model` (PretrainedModelConfig) says; `r_embed_init` (the
    stage's: keep is the family's official rule, else normal | copy) starts the r embedding of an untouched
    pipeline."""
    if not is_latent(init):
        raise DataError(
            f"train.init {init}: not a latent generator folder (no {META} of format "
            f"twinflow-latent-generator/1); wrap the pipeline first: python -m "
            f"twinflow_core.adapters.pipeline wrap {init} --family {model.family}"
        )
    meta = json.loads((Path(init) / META).read_text())
    if meta["family"] != model.family:
        raise DataError(f"train.init {init}: family {meta['family']!r}, but model.family is {model.family!r}")
    if meta.get("lora"):
        raise DataError(f"train.init {init}: a LoRA generator; start from its base pipeline instead")
    dtype = getattr(torch, model.dtype)
    pipe = load_pipeline(init, model.family, dtype, transformer=False)  # the net below is the transformer
    torch.manual_seed(seed)  # the r embedding's N(0, 0.02) init, the LoRA's gaussian init
    if model.finetune == "lora":
        net = TransformerVelocity(load_transformer(init, model.family, "transformer", dtype), model.family, "half")
        add_lora(
            net,
            rank=model.lora_rank,
            alpha=model.lora_alpha,
            targets=model.lora_targets or None,
            ema=0.0 < ema_decay < 1.0,
        )
        teacher = LoraTeacher(net, ema_decay)
    else:
        if meta.get("extra", {}).get("base"):  # an untouched pipeline: the r embedding starts by the family rule
            net = TransformerVelocity(
                load_transformer(init, model.family, "transformer", dtype),
                model.family,
                "gated",
                None if r_embed_init == "keep" else r_embed_init,
            )
        else:  # a TwinFlow generator: its trained r embedding is loaded
            net = load_velocity(init, model.family, "gated", subfolder="transformer", dtype=dtype)
        net.requires_grad_(True)
        teacher = None
    if model.gradient_checkpointing:
        net.transformer.enable_gradient_checkpointing()
    return LatentParts(net.train(), teacher, pipe, meta)


def check_latents(data_meta: dict, path: str, model) -> None:
    if data_meta.get("family") != model.family:
        raise DataError(f"{path}: latents of family {data_meta.get('family')!r}, model.family is {model.family!r}")
    if int(data_meta.get("image_size", 0)) != model.image_size:
        raise DataError(
            f"{path}: latents encoded from {data_meta.get('image_size')} px images, model.image_size "
            f"is {model.image_size} (re-run encode, or set model.image_size)"
        )


class ExportLatentGenerator(L.Callback):
    """At the end: the generator as a diffusers pipeline folder (generator_files.save_latent_generator) in
    `out`, the teacher's weights (EMA copy or EMA adapter) where there is one, and the loss history as
    train_log.json."""

    def __init__(self, out, parts: LatentParts, model, extra: dict):
        self.out, self.parts, self.model, self.extra = Path(out), parts, model, extra
        self.done = False

    def on_train_end(self, trainer, pl_module):

        self.done = True
        lora = self.model.finetune == "lora"
        online = not lora and pl_module.exports_online_weights()  # no EMA copy, or a frozen one (the base)
        if online:
            # online weights; under FSDP this gathers the full state on rank 0 (every rank must call it)
            full = trainer.strategy.lightning_module_state_dict()
            state = {k[len("net.") :]: v for k, v in full.items() if k.startswith("net.")}
        if not trainer.is_global_zero:
            return
        if lora:
            net, adapter = pl_module.net, EMA_ADAPTER if 0.0 < pl_module.ema.decay < 1.0 else TRAIN
        elif not online:
            net, adapter = pl_module.ema.model, TRAIN
        else:
            net, adapter = copy.deepcopy(pl_module.net).cpu(), TRAIN
            net.load_state_dict(state)
        meta = generator_meta(
            self.model.family,
            "half" if lora else "gated",
            self.parts.pipe,
            self.model.image_size,
            self.model.max_sequence_length,
            {**self.extra, "steps": trainer.global_step},
        )
        pipe = copy.copy(self.parts.pipe)  # the export sets its transformer; the base pipeline stays as loaded
        save_latent_generator(self.out, net, pipe, meta, adapter=adapter)
        (self.out / "train_log.json").write_text(json.dumps(pl_module.history, indent=1))

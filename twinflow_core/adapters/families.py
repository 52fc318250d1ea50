"""The per-family table: how each diffusers transformer becomes the shared F(x, t, r, cond).

A row says where the model's own timestep-embedding module is, what name the added r embedding carries (the
official TwinFlow name, so official checkpoints load), how the r embedding starts (a copy of the native one or
N(0, 0.02) with zero bias), by how much the adapter multiplies t before the model sees it, and how the latents
and the condition are laid out in the model's call. Nothing here copies a model's forward: `call` only builds
the keyword arguments the model's own forward takes, and `unpack` turns its output back into a latent velocity.

Conditions are dicts of tensors (batch first) so the objective can select rows of them:
  "prompt_embeds" (B, L, D), "pooled" (B, P) where the family has a pooled projection, "mask" (B, L) of 0/1
  where it takes a text mask.
Every family here predicts the flow-matching velocity noise - data with x_t = t*noise + (1-t)*data (diffusers'
FlowMatchEulerDiscreteScheduler), which is the project's convention: no sign flip or reparameterisation.
Read from the official wrappers (inclusionAI/TwinFlow src/networks/): SD3 `time_text_embed_2` N(0,0.02),
timestep t*1000, gate (t - r); Qwen-Image `time_text_embed_2` copied, t unscaled (its module scales by 1000),
gate (t - r); SANA (OpenUni) `time_embed_2` N(0,0.02), t*1000, both outputs of the module gated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from twinflow_core.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    transformer_class: str  # diffusers class name
    pipeline_class: str  # the diffusers pipeline that holds it (export / plain loading)
    time_embed: str  # attribute of the model's own timestep-embedding module
    r_embed: str  # attribute of the added r embedding (official TwinFlow name)
    r_init: str  # "normal": N(0, 0.02), zero bias (official SD3 / SANA); "copy" (official Qwen)
    time_scale: float  # the model's timestep = t * time_scale
    call: Callable  # (transformer, x, timestep, cond) -> kwargs of transformer.forward
    unpack: Callable  # (output[0], x) -> velocity shaped like x
    cond_keys: tuple[str, ...]  # condition entries the family needs
    note: str = ""


def _sd3_call(model, x, timestep, cond):
    if max(x.shape[-2:]) // model.config.patch_size > model.config.pos_embed_max_size:
        raise ConfigError(
            f"sd3: latents {tuple(x.shape[-2:])} exceed pos_embed_max_size "
            f"{model.config.pos_embed_max_size} x patch {model.config.patch_size}"
        )
    return {
        "hidden_states": x,
        "encoder_hidden_states": cond["prompt_embeds"],
        "pooled_projections": cond["pooled"],
        "timestep": timestep,
        "return_dict": False,
    }


def _same(out, x):
    return out


def _qwen_pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches, the layout of QwenImagePipeline._pack_latents."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _qwen_unpack(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _qwen_call(model, x, timestep, cond):
    if getattr(model.config, "zero_cond_t", False):
        raise ConfigError("qwen_image: zero_cond_t (the edit models' doubled timestep batch) is not supported")
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ConfigError(f"qwen_image: latent height and width must be even, got {tuple(x.shape[-2:])}")
    b, _, h, w = x.shape
    return {
        "hidden_states": _qwen_pack(x),
        "encoder_hidden_states": cond["prompt_embeds"],
        "encoder_hidden_states_mask": cond["mask"],
        "timestep": timestep,
        "img_shapes": [[(1, h // 2, w // 2)]] * b,
        "return_dict": False,
    }


def _sana_call(model, x, timestep, cond):
    return {
        "hidden_states": x,
        "encoder_hidden_states": cond["prompt_embeds"],
        "encoder_attention_mask": cond["mask"],
        "timestep": timestep,
        "return_dict": False,
    }


FAMILIES: dict[str, Family] = {
    "sd3": Family(
        "sd3",
        "SD3Transformer2DModel",
        "StableDiffusion3Pipeline",
        "time_text_embed",
        "time_text_embed_2",
        "normal",
        1000.0,
        _sd3_call,
        _same,
        ("prompt_embeds", "pooled"),
        "SD3 / SD3.5 (MMDiT; SD3.5's dual attention and qk-norm are config options of the same class)",
    ),
    "qwen_image": Family(
        "qwen_image",
        "QwenImageTransformer2DModel",
        "QwenImagePipeline",
        "time_text_embed",
        "time_text_embed_2",
        "copy",
        1.0,
        _qwen_call,
        _qwen_unpack,
        ("prompt_embeds", "mask"),
        "Qwen-Image (MMDiT on packed 2x2 latents; its embedding module scales t by 1000)",
    ),
    "sana": Family(
        "sana",
        "SanaTransformer2DModel",
        "SanaPipeline",
        "time_embed",
        "time_embed_2",
        "normal",
        1000.0,
        _sana_call,
        _same,
        ("prompt_embeds", "mask"),
        "SANA (linear DiT; AdaLayerNormSingle gives two outputs, both gated)",
    ),
}

# Why these are not rows (yet):
# - Flux: FluxTransformer2DModel scales t by 1000 inside its forward, so the hook sees 1000*t while the adapter
#   passes t; a row needs an embed_scale column and the packed latents + img_ids/txt_ids call. Flux-dev is also
#   guidance-distilled: there is no true unconditional branch for the CFG-baked target (large-models.md).
# - Z-Image: the official inference patch feeds sign(t)(1-|t|) with |t| to the main embedder and negates the
#   output; a reversed-time convention that needs its own output form, and there is no official training recipe.


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(
            f"unknown model family {name!r}; supported: {', '.join(FAMILIES)} "
            "(flux and z_image: see twinflow_core/adapters/families.py)"
        )
    return FAMILIES[name]


def family_of(transformer) -> Family:
    cls = type(transformer).__name__
    for fam in FAMILIES.values():
        if fam.transformer_class == cls:
            return fam
    raise ConfigError(f"no adapter for {cls}; supported: {', '.join(f.transformer_class for f in FAMILIES.values())}")

"""The frozen codec of a diffusers pipeline: its text encoders (captions -> the condition dict of families.py)
and its VAE (pixels <-> model latents), and `load_pipeline`, which loads the pipeline they belong to.

Prompt encoding and the VAE scaling follow the official SD3 wrapper (VAE posterior mean, (z - shift) * scale);
the Qwen-Image VAE (per-channel mean / std) and SANA's DC-AE (scaling factor only) follow their own pipelines.

diffusers and the stock-diffusers classes (twinflow_core/adapters/stock.py) are imported where used: they take
seconds to import, and the in-house nets' generators, which share the generator loader (twinflow_core/loader.py),
do not need them.
"""

# Lazy imports: diffusers
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import numpy as np
import torch

from twinflow_core.adapters.families import get_family
from twinflow_core.errors import ConfigError, DataError
from twinflow_core.generator import to_pixels


def load_pipeline(source: str, family: str, dtype=torch.float32, transformer: bool = True):
    """The family's diffusers pipeline from a local folder or a hub id (offline where HF_HUB_OFFLINE=1).

    transformer=False: without its transformer (None), for callers that load it themselves with the r embedding
    (training, a trained generator) or do not need it (encoding): a second copy of a 20B transformer is not
    loaded, and the base class's "weights not used" report about the r embedding is not printed."""
    import diffusers

    import twinflow_core.adapters.stock  # noqa: F401  (an export's model_index.json names its classes)

    cls = getattr(diffusers, get_family(family).pipeline_class)
    try:
        pipe = cls.from_pretrained(source, dtype=dtype, **({} if transformer else {"transformer": None}))
    except (OSError, ValueError) as err:
        raise DataError(f"{cls.__name__} from {source}: {str(err).splitlines()[0]}") from None
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        part = getattr(pipe, name, None)
        if part is not None:
            part.requires_grad_(False).eval()
    return pipe


@torch.no_grad()
def encode_prompts(pipe, family: str, captions: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """Captions -> the condition dict of families.py, by the pipeline's own encode_prompt (longer prompts are cut
    at the encoders' lengths, as the pipeline itself does; its per-call warning about it is silenced)."""
    from diffusers.utils import logging as dlog

    captions = list(captions)
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        return _encode_prompts(pipe, family, captions, max_len)
    finally:
        dlog.set_verbosity(level)


def _encode_prompts(pipe, family: str, captions: list[str], max_len: int) -> dict[str, torch.Tensor]:
    if family == "sd3":
        pe, _, pooled, _ = pipe.encode_prompt(
            prompt=captions,
            prompt_2=None,
            prompt_3=None,
            do_classifier_free_guidance=False,
            max_sequence_length=max_len,
            device=pipe.device,
        )
        return {"prompt_embeds": pe.float(), "pooled": pooled.float()}
    if family == "sana":  # Gemma tokens padded to max_len by the pipeline; no complex human instruction (its
        # negative prompt has none either: the null prompt "" is encoded the same way as a caption)
        pe, mask = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=max_len)[:2]
        return {"prompt_embeds": pe.float(), "mask": mask.long()}
    if family == "qwen_image":
        pe, mask = pipe.encode_prompt(captions, max_sequence_length=max_len)
        if mask is None:  # the pipeline returns None for a batch without padding
            mask = torch.ones(pe.shape[:2], dtype=torch.long, device=pe.device)
        return _pad_tokens(pe.float(), mask.long(), max_len)
    raise ConfigError(f"no prompt encoder for family {family!r}")


def _pad_tokens(pe: torch.Tensor, mask: torch.Tensor, max_len: int) -> dict[str, torch.Tensor]:
    """QwenImagePipeline pads a batch to its longest prompt: pad every batch to max_len (zeros, mask 0), as the
    other families' encoders do, so that batches and shards of different prompts concatenate. The transformer
    masks the padding (the velocity is unchanged by it; tests/test_adapters_families_pipeline.py)."""
    pad = max_len - pe.shape[1]
    if pad > 0:
        pe = torch.cat([pe, pe.new_zeros(pe.shape[0], pad, pe.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1)
    return {"prompt_embeds": pe, "mask": mask}


def vae_kind(config) -> str:
    """ "kl" (AutoencoderKL: SD3), "qwen" (AutoencoderKLQwenImage: a video VAE, 5-D latents, per-channel
    mean / std normalisation) or "dc" (AutoencoderDC: SANA, deterministic, scaling factor only), from the VAE's
    config (the model's or its config.json's)."""
    if "z_dim" in config and "latents_mean" in config:
        return "qwen"
    if "encoder_block_out_channels" in config:
        return "dc"
    return "kl"


def vae_geometry(config) -> tuple[int, int]:
    """(latent channels, pixel -> latent downsampling), as each pipeline derives its vae_scale_factor."""
    kind = vae_kind(config)
    if kind == "qwen":
        return int(config["z_dim"]), 2 ** len(config["temperal_downsample"])
    if kind == "dc":
        return int(config["latent_channels"]), 2 ** (len(config["encoder_block_out_channels"]) - 1)
    return int(config["latent_channels"]), 2 ** (len(config.get("block_out_channels", [0])) - 1)


def _vae_shift_scale(vae, like: torch.Tensor):
    """(shift, scale) with model latents = (vae latents - shift) * scale, broadcastable to `like` (N, C, h, w)."""
    cfg = vae.config
    if vae_kind(cfg) == "qwen":  # QwenImagePipeline: (z - latents_mean) / latents_std, per channel
        mean = torch.tensor(cfg.latents_mean, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        return mean, 1.0 / std
    shift = getattr(cfg, "shift_factor", None) or 0.0
    return float(shift), float(cfg.scaling_factor)


@torch.no_grad()
def encode_images(vae, pixels: torch.Tensor) -> torch.Tensor:
    """float pixels (N, 3, H, W) in [-1, 1] -> model latents (N, C, h, w): the posterior mean (KL VAEs) or the
    latent (DC-AE), shifted and scaled as the family's pipeline does. The Qwen-Image VAE sees one frame."""
    x = pixels.to(vae.device, vae.dtype)
    kind = vae_kind(vae.config)
    if kind == "qwen":
        z = vae.encode(x.unsqueeze(2)).latent_dist.mean[:, :, 0]
    elif kind == "dc":
        z = vae.encode(x).latent
    else:
        z = vae.encode(x).latent_dist.mean
    z = z.float()
    shift, scale = _vae_shift_scale(vae, z)
    return (z - shift) * scale


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """Model latents (N, C, h, w) -> uint8 (N, H, W, 3)."""
    latents = latents.float()
    shift, scale = _vae_shift_scale(vae, latents)
    z = (latents / scale + shift).to(vae.device, vae.dtype)
    if vae_kind(vae.config) == "qwen":
        pixels = vae.decode(z.unsqueeze(2), return_dict=False)[0][:, :, 0]
    else:
        pixels = vae.decode(z, return_dict=False)[0]
    return to_pixels(pixels.float().clamp(-1, 1))

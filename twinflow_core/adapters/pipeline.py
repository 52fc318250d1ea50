"""A latent text-to-image generator: frozen text encoders + TransformerVelocity + frozen VAE decoder, with the
same `generate(captions, nfe, seed, style, cfg_scale)` -> uint8 (N, H, W, 3) as twinflow_core.checkpoint's
Generator, so evaluation, the pyfunc model and `twinflow generate` need not know which kind they hold.

On disk a generator is a diffusers pipeline folder (safetensors only) that diffusers itself loads, plus
`twinflow_generator.json` (family, time input, image size, prompt length). Full fine-tuning writes the trained
transformer into the folder (its r embedding's weights inside, under the official name); LoRA keeps the base
transformer and adds `lora/pytorch_lora_weights.safetensors` in the diffusers LoRA format.
Prompt encoding and the VAE scaling follow the official SD3 wrapper (VAE posterior mean, (z - shift) * scale).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from twinflow_core.errors import ConfigError, DataError

FORMAT = "twinflow-latent-generator/1"
META = "twinflow_generator.json"
LORA_DIR = "lora"
CHUNK = 64


def load_pipeline(source: str, family: str, dtype=torch.float32):
    """The family's diffusers pipeline from a local folder or a hub id (offline where HF_HUB_OFFLINE=1)."""
    import diffusers

    from twinflow_core.adapters.families import get_family

    cls = getattr(diffusers, get_family(family).pipeline_class)
    try:
        pipe = cls.from_pretrained(source, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise DataError(f"{cls.__name__} from {source}: {str(err).splitlines()[0]}") from None
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        part = getattr(pipe, name, None)
        if part is not None:
            part.requires_grad_(False).eval()
    return pipe


@torch.no_grad()
def encode_prompts(pipe, family: str, captions: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """Captions -> the condition dict of families.py, by the pipeline's own encode_prompt."""
    captions = list(captions)
    if family == "sd3":
        pe, _, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None,
                                              do_classifier_free_guidance=False, max_sequence_length=max_len,
                                              device=pipe.device)
        return {"prompt_embeds": pe.float(), "pooled": pooled.float()}
    if family in ("sana", "qwen_image"):
        out = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=max_len) \
            if family == "sana" else pipe.encode_prompt(captions, max_sequence_length=max_len)
        pe, mask = out[0], out[1]
        return {"prompt_embeds": pe.float(), "mask": mask.long()}
    raise ConfigError(f"no prompt encoder for family {family!r}")


def _vae_shift_scale(vae):
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return float(shift), float(vae.config.scaling_factor)


@torch.no_grad()
def encode_images(vae, pixels: torch.Tensor) -> torch.Tensor:
    """float pixels (N, 3, H, W) in [-1, 1] -> model latents (posterior mean, shifted and scaled)."""
    shift, scale = _vae_shift_scale(vae)
    dist = vae.encode(pixels.to(vae.dtype)).latent_dist
    return ((dist.mean - shift) * scale).float()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """Model latents -> uint8 (N, H, W, 3)."""
    from twinflow_core.checkpoint import to_pixels

    shift, scale = _vae_shift_scale(vae)
    pixels = vae.decode((latents / scale + shift).to(vae.dtype), return_dict=False)[0]
    return to_pixels(pixels.float().clamp(-1, 1))


@dataclass
class LatentGenerator:
    net: torch.nn.Module      # TransformerVelocity
    pipe: object              # the diffusers pipeline (text encoders, tokenizers, VAE)
    meta: dict

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def family(self) -> str:
        return self.meta["family"]

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return encode_prompts(self.pipe, self.family, captions, int(self.meta["max_sequence_length"]))

    @torch.no_grad()
    def generate(self, captions: list[str], nfe: int = 1, seed: int = 0, style: str = "few",
                 cfg_scale: float = 0.0) -> np.ndarray:
        from twinflow_core.sampler import euler, sample

        captions = list(captions)
        if not captions:
            return np.zeros((0, self.image_size, self.image_size, 3), dtype=np.uint8)
        gen = torch.Generator().manual_seed(int(seed))
        c, size = int(self.meta["latent_channels"]), int(self.meta["latent_size"])
        z_all = torch.randn(len(captions), c, size, size, generator=gen)
        self.net.eval()
        out = []
        for start in range(0, len(captions), CHUNK):
            z, cond = z_all[start : start + CHUNK], self.encode(captions[start : start + CHUNK])
            if style == "euler":
                uncond = self.encode([""] * len(z)) if cfg_scale > 0 else None
                x = euler(self.net, z, cond, steps=nfe, cfg_scale=cfg_scale, uncond=uncond)
            else:
                if cfg_scale > 0:
                    raise DataError("cfg_scale applies to style 'euler' only; the any-step sampler bakes guidance in")
                x = sample(self.net, z, cond, nfe=nfe, style=style, generator=gen)
            out.append(decode_latents(self.pipe.vae, x))
        return np.concatenate(out)


def generator_meta(family: str, time_input: str, pipe, image_size: int, max_len: int, extra=None) -> dict:
    factor = getattr(pipe, "vae_scale_factor", 8)
    return {"format": FORMAT, "family": family, "time_input": time_input, "image_size": int(image_size),
            "latent_size": int(image_size) // int(factor), "latent_channels": int(pipe.vae.config.latent_channels),
            "max_sequence_length": int(max_len), "lora": time_input == "half", "extra": extra or {}}


def save_latent_generator(out, net, pipe, meta: dict) -> Path:
    """Full fine-tuning: the pipeline with the trained transformer. LoRA: the base pipeline + lora/."""
    from twinflow_core.adapters.lora import export_lora
    from twinflow_core.adapters.velocity import ADAPTER_META

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe.transformer = net.transformer
    if meta["lora"]:
        from safetensors.torch import save_file

        # the base weights under their plain diffusers names (peft's injected layers hold them as base_layer)
        base_state = {k.replace(".base_layer", ""): v.detach().cpu().contiguous()
                      for k, v in pipe.transformer.state_dict().items() if "lora_" not in k}
        pipe.save_pretrained(str(out), safe_serialization=True)
        for f in [*(out / "transformer").glob("*.safetensors"), *(out / "transformer").glob("*.index.json")]:
            f.unlink()
        save_file(base_state, str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
        export_lora(net, out / LORA_DIR)
    else:
        pipe.save_pretrained(str(out), safe_serialization=True)
        (out / "transformer" / ADAPTER_META).write_text(json.dumps(
            {"family": meta["family"], "time_input": "gated", "r_embed": net.family.r_embed}, indent=1) + "\n")
    (out / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out


def is_latent_generator(directory) -> bool:
    return (Path(directory) / META).is_file()


def load_latent_generator(directory, device="cpu") -> LatentGenerator:
    from twinflow_core.adapters.velocity import load_velocity

    directory = Path(directory)
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{directory / META}: unreadable ({err})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{directory / META}: format {meta.get('format')!r} is not {FORMAT!r}")
    pipe = load_pipeline(str(directory), meta["family"])
    net = load_velocity(str(directory), meta["family"], meta["time_input"], subfolder="transformer")
    if meta["lora"]:
        net.transformer.load_lora_adapter(str(directory / LORA_DIR), adapter_name="default",
                                          weight_name="pytorch_lora_weights.safetensors")
    pipe.transformer = net.transformer
    return LatentGenerator(net.to(device).eval(), pipe.to(device), meta)

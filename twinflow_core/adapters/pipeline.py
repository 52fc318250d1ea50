"""A latent text-to-image generator: frozen text encoders + TransformerVelocity + frozen VAE decoder, with the
same `generate(captions, nfe, seed, style, cfg_scale)` -> uint8 (N, H, W, 3) as the in-house nets'
generator (twinflow_core.generator.Generator), so evaluation, the pyfunc model and `twinflow generate` need not
know which kind they hold.

On disk a generator is a diffusers pipeline folder (safetensors only) that diffusers itself loads, plus the two
files every generator checkpoint of this project has, so the stages' DVC deps (`<init>/model.json`,
`<init>/model.safetensors`) name a latent model exactly as they name a UNet one:
- `model.json`: format twinflow-latent-generator/1, family, time input, image size, prompt length, and the
  sha256 of every file of the folder (so a changed VAE or text encoder changes this file, and DVC sees it);
- `model.safetensors`: a hard link to the transformer's weights file (no second copy on disk).
Full fine-tuning writes the trained transformer into the folder (its r embedding's weights inside, under the
official name); LoRA keeps the base transformer and adds `lora/pytorch_lora_weights.safetensors` in the diffusers
LoRA format. `wrap_base` turns an untouched pretrained pipeline folder into such a generator (the base: its
own r embedding is never used by the many-step Euler reference, which passes r = t, so its gate is 0).
Prompt encoding and the VAE scaling follow the official SD3 wrapper (VAE posterior mean, (z - shift) * scale).

diffusers, peft and the stock-diffusers classes (twinflow_core/adapters/stock.py) are imported where used: they take
seconds to import, and the in-house nets' generators, which share this door, do not need them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from twinflow_core.adapters.families import get_family
from twinflow_core.adapters.lora import export_lora
from twinflow_core.adapters.velocity import ADAPTER_META, load_velocity
from twinflow_core.data.prepared import file_sha256
from twinflow_core.errors import CheckpointError, ConfigError, DataError, TwinflowError, exit_code
from twinflow_core.files import member_name
from twinflow_core.generator import sample_images, to_pixels

FORMAT = "twinflow-latent-generator/1"
META = "model.json"  # the same name as the in-house nets' format (twinflow_core/nets/generator.py)
WEIGHTS = "model.safetensors"  # hard link to the transformer weights
LORA_DIR = "lora"
CHUNK = 64


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


@dataclass
class LatentGenerator:
    net: torch.nn.Module  # TransformerVelocity
    pipe: object  # the diffusers pipeline (text encoders, tokenizers, VAE)
    meta: dict

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def family(self) -> str:
        return self.meta["family"]

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return encode_prompts(self.pipe, self.family, captions, int(self.meta["max_sequence_length"]))

    @property
    def vocabulary(self) -> list[str]:
        """The words of the pipeline's first tokenizer, its subword markers stripped (CLIP's </w>, BPE's Ġ, ▁)."""
        words = {w.replace("</w>", "").lstrip("Ġ▁") for w in self.pipe.tokenizer.get_vocab()}
        return sorted(w for w in words if w and not w.startswith("<"))

    @property
    def tokenizer(self) -> SimpleNamespace:
        """`generator.tokenizer.vocabulary`, as callers written for the in-house generator read the words; the
        protocol's `vocabulary` is the interface (a pipeline's own tokenizers stay in `pipe`)."""
        return SimpleNamespace(vocabulary=self.vocabulary)

    def generate(
        self, captions: list[str], nfe: int = 1, seed: int = 0, style: str = "few", cfg_scale: float = 0.0
    ) -> np.ndarray:
        c, size = int(self.meta["latent_channels"]), int(self.meta["latent_size"])
        return sample_images(
            self.net,
            captions,
            nfe,
            seed,
            style,
            cfg_scale,
            noise_shape=(c, size, size),
            image_size=self.image_size,
            encode=self.encode,
            null=lambda n: self.encode([""] * n),
            decode=lambda x: decode_latents(self.pipe.vae, x),
            chunk=CHUNK,
            device=self.pipe.device,
        )


def generator_meta(family: str, time_input: str, pipe, image_size: int, max_len: int, extra=None) -> dict:
    channels, factor = vae_geometry(pipe.vae.config)
    return {
        "format": FORMAT,
        "family": family,
        "time_input": time_input,
        "image_size": int(image_size),
        "latent_size": int(image_size) // int(factor),
        "latent_channels": int(channels),
        "max_sequence_length": int(max_len),
        "lora": time_input == "half",
        "extra": extra or {},
    }


def save_latent_generator(out, net, pipe, meta: dict, adapter: str = "default") -> Path:
    """Full fine-tuning: the pipeline with the trained transformer. LoRA: the base pipeline + lora/ (the weights of
    `adapter`: "default", the trained one, or "ema", its EMA)."""
    from twinflow_core.adapters.stock import mark_for_diffusers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # register_modules, not an attribute: a pipeline loaded without its transformer (load_pipeline) records it in
    # model_index.json only this way, and a plain diffusers pipeline then loads the folder
    pipe.register_modules(transformer=net.transformer)
    if meta["lora"]:
        # the base weights under their plain diffusers names (peft's injected layers hold them as base_layer)
        base_state = {
            k.replace(".base_layer", ""): v.detach().cpu().contiguous()
            for k, v in pipe.transformer.state_dict().items()
            if "lora_" not in k
        }
        pipe.save_pretrained(str(out), safe_serialization=True)
        for f in [*(out / "transformer").glob("*.safetensors"), *(out / "transformer").glob("*.index.json")]:
            f.unlink()
        save_file(base_state, str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
        export_lora(net, out / LORA_DIR, name=adapter)
    else:
        pipe.save_pretrained(str(out), safe_serialization=True)
        (out / "transformer" / ADAPTER_META).write_text(
            json.dumps({"family": meta["family"], "time_input": "gated", "r_embed": net.family.r_embed}, indent=1)
            + "\n"
        )
    mark_for_diffusers(out, meta["family"], meta["time_input"])  # stock diffusers samples it as generate() does
    return write_generator_files(out, meta)


def _transformer_weights(folder: Path) -> Path:
    files = sorted((folder / "transformer").glob("*.safetensors"))
    index = sorted((folder / "transformer").glob("*.safetensors.index.json"))
    if len(files) == 1:
        return files[0]
    if index:  # a sharded transformer: the link names its index; model.json's hashes cover every shard
        return index[0]
    raise DataError(f"{folder}/transformer: no safetensors weights (only safetensors are read)")


def write_generator_files(folder, meta: dict) -> Path:
    """model.safetensors (a hard link to the transformer's weights) and model.json (meta + every file's sha256),
    model.json last: a folder with it is complete."""
    folder = Path(folder)
    link = folder / WEIGHTS
    link.unlink(missing_ok=True)
    (folder / META).unlink(missing_ok=True)
    os.link(_transformer_weights(folder), link)
    files = {str(f.relative_to(folder)): file_sha256(f) for f in sorted(folder.rglob("*")) if f.is_file() and f != link}
    (folder / META).write_text(json.dumps({**meta, "files": files}, indent=1, sort_keys=True) + "\n")
    return folder


def _vae_factor(folder: Path) -> tuple[int, int]:
    """(latent channels, pixel -> latent downsampling) from the VAE's config, as diffusers derives them."""
    try:
        cfg = json.loads((folder / "vae" / "config.json").read_text())
        return vae_geometry(cfg)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{folder}/vae/config.json: unreadable ({type(err).__name__}: {err})") from None


def _patch_size(folder: Path) -> int:
    """The transformer's patch size (SD3 and Qwen-Image 2, SANA 1): latents must tile into patches."""
    try:
        return int(json.loads((folder / "transformer" / "config.json").read_text()).get("patch_size") or 1)
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise DataError(f"{folder}/transformer/config.json: unreadable ({type(err).__name__}: {err})") from None


def wrap_base(folder, family: str, image_size: int, max_len: int) -> Path:
    """Make a pretrained diffusers pipeline folder (untouched) a base generator of this project, in place."""
    folder = Path(folder)
    fam = get_family(family)
    try:
        cls = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{folder}: not a diffusers pipeline folder (model_index.json: {err})") from None
    if cls != fam.pipeline_class:
        raise ConfigError(f"{folder}: a {cls}, not the {fam.pipeline_class} of family {family!r}")
    channels, factor = _vae_factor(folder)
    patch = _patch_size(folder)
    if image_size % (factor * patch):
        raise ConfigError(
            f"image_size {image_size} is not a multiple of {factor * patch} (the VAE's downsampling "
            f"{factor} x the transformer's patch {patch})"
        )
    meta = {
        "format": FORMAT,
        "family": family,
        "time_input": "gated",
        "image_size": int(image_size),
        "latent_size": int(image_size) // factor,
        "latent_channels": channels,
        "max_sequence_length": int(max_len),
        "lora": False,
        "extra": {"base": True},
    }
    return write_generator_files(folder, meta)


def check_generator_files(folder, where: str | None = None) -> None:
    """Every file model.json lists is in `folder` with its recorded sha256 (a copied or fetched generator is
    complete and undamaged); a CheckpointError naming the first file that is not."""
    folder = Path(folder)
    where = where or str(folder)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{where}/{META}: unreadable ({err})") from None
    for rel, digest in sorted((meta.get("files") or {}).items()):
        path = folder / member_name(rel, f"{where}/{META} files")  # a listed '../x' would be read from outside
        if not path.is_file():
            raise CheckpointError(f"{where}/{rel}: missing (model.json lists it)")
        if file_sha256(path) != digest:
            raise CheckpointError(f"{where}/{rel}: sha256 differs from model.json's (damaged or changed)")


def load_latent_generator(directory, device="cpu") -> LatentGenerator:
    directory = Path(directory)
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{directory / META}: unreadable ({err})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{directory / META}: format {meta.get('format')!r} is not {FORMAT!r}")
    if isinstance(meta.get("base"), dict):  # a registered version: its own weights + the base it names
        base = resolve_base(meta["base"], str(directory))
        pipe = load_pipeline(str(base), meta["family"], transformer=False)
        net = load_velocity(
            str(base if meta["lora"] else directory), meta["family"], meta["time_input"], subfolder="transformer"
        )
    else:
        pipe = load_pipeline(str(directory), meta["family"], transformer=False)
        if meta.get("extra", {}).get("base"):
            torch.manual_seed(0)  # the base's unused r embedding: drawn the same way every time
        net = load_velocity(str(directory), meta["family"], meta["time_input"], subfolder="transformer")
    if meta["lora"]:
        net.transformer.load_lora_adapter(
            str(directory / LORA_DIR), adapter_name="default", weight_name="pytorch_lora_weights.safetensors"
        )
    pipe.register_modules(transformer=net.transformer)
    return LatentGenerator(net.to(device).eval(), pipe.to(device), meta)


LEAN_DTYPES = ("float32", "bfloat16", "float16")
CARD = "MODEL_CARD.md"


def base_reference(folder, source: str) -> dict:
    """What pins a base pipeline folder: the source it was named by, where it was, and the sha256 of its
    model.json (which lists the sha256 of every file of the folder: the hash of the hashes)."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise DataError(
            f"{folder}: not a base generator (no {META}); run "
            f"`python -m twinflow_core.adapters.pipeline wrap {folder} --family F --image-size N`"
        )
    return {"source": str(source), "path": str(folder.resolve()), "model_json_sha256": file_sha256(folder / META)}


def resolve_base(ref: dict, where: str) -> Path:
    """The base folder a registered version names: where it was registered, else its source from here (a
    checkout holding models/X); it must be the very folder (model.json's sha256)."""
    tried = list(dict.fromkeys([ref.get("path") or "", ref.get("source") or ""]))
    for candidate in filter(None, tried):
        folder = Path(candidate)
        if (folder / META).is_file():
            if file_sha256(folder / META) != ref.get("model_json_sha256"):
                raise CheckpointError(
                    f"{where}: its base {folder} is not the one it was trained from (model.json "
                    f"sha256 differs from {str(ref.get('model_json_sha256'))[:12]}...)"
                )
            return folder
    raise CheckpointError(
        f"{where}: its base pipeline {ref.get('source')!r} is not here (looked in "
        f"{', '.join(filter(None, tried))}); run from the project that holds it, or put the "
        f"folder (model.json sha256 {str(ref.get('model_json_sha256'))[:12]}...) there"
    )


def export_lean(src, out, base: dict, card: str = "", dtype: str = "float32") -> Path:
    """A registered version of the latent generator `src` (a training output): full fine-tuning -> the trained
    transformer (weights cast to `dtype`) and its r-embedding meta; LoRA -> the adapter only; both with a model
    card and model.json naming the base by `base` (base_reference). No optimiser, no EMA, no base weights, no
    second copy of the weights (a lean folder has no model.safetensors). Stock diffusers reads it as it is:
    `SD3Transformer2DModel.from_pretrained(out, subfolder="transformer")`, `pipe.load_lora_weights(out/lora)`."""
    if dtype not in LEAN_DTYPES:
        raise ConfigError(f"register weights dtype {dtype!r} not in {LEAN_DTYPES}")
    src, out = Path(src), Path(out)
    meta = json.loads((src / META).read_text())
    out.mkdir(parents=True, exist_ok=True)
    if meta["lora"]:
        (out / LORA_DIR).mkdir()
        shutil.copyfile(
            src / LORA_DIR / "pytorch_lora_weights.safetensors", out / LORA_DIR / "pytorch_lora_weights.safetensors"
        )
    else:
        (out / "transformer").mkdir()
        for name in ("config.json", ADAPTER_META):
            if (src / "transformer" / name).is_file():
                shutil.copyfile(src / "transformer" / name, out / "transformer" / name)
        for weights in sorted((src / "transformer").glob("*.safetensors")):
            if dtype == "float32":
                shutil.copyfile(weights, out / "transformer" / weights.name)
            else:
                state = {
                    k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v).contiguous()
                    for k, v in load_file(str(weights)).items()
                }
                save_file(state, str(out / "transformer" / weights.name))
        for index in (src / "transformer").glob("*.index.json"):
            shutil.copyfile(index, out / "transformer" / index.name)
    if card:
        (out / CARD).write_text(card)
    files = {str(f.relative_to(out)): file_sha256(f) for f in sorted(out.rglob("*")) if f.is_file()}
    lean = {**meta, "base": base, "weights_dtype": dtype if not meta["lora"] else "float32", "files": files}
    (out / META).write_text(json.dumps(lean, indent=1, sort_keys=True) + "\n")
    return out


def main(argv=None) -> int:
    """python -m twinflow_core.adapters.pipeline wrap FOLDER --family sd3 --image-size 1024 [--max-len 256]:
    make a downloaded diffusers pipeline folder the base generator a latent experiment starts from (train.init) and
    measures against (evaluate.base): writes model.json and the model.safetensors link; changes nothing else."""
    ap = argparse.ArgumentParser(prog="python -m twinflow_core.adapters.pipeline", description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    wrap = sub.add_parser("wrap")
    wrap.add_argument("folder")
    wrap.add_argument("--family", required=True)
    wrap.add_argument("--image-size", type=int, required=True)
    wrap.add_argument("--max-len", type=int, default=256)
    args = ap.parse_args(argv)
    try:
        folder = wrap_base(args.folder, args.family, args.image_size, args.max_len)
    except TwinflowError as err:
        print(f"wrap: error: {err}", file=sys.stderr)
        return exit_code(err)
    print(f"wrap: {folder} is a {args.family} base generator ({folder / META})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

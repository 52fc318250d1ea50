"""The on-disk format of a latent generator: writing a trained one, making a pretrained pipeline folder a base
generator, checking a copied one, and the lean registered version that names its base.

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
`export_lean` writes a registered version: the trained transformer or adapter only, its model.json naming the
base folder by `base_reference`, which `resolve_base` finds again.

The stock-diffusers classes (twinflow_core/adapters/stock.py) are imported where used: they import diffusers,
which takes seconds, and checking or wrapping a folder does not need them.
"""

# Lazy imports: diffusers
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from twinflow_core.adapters.codec import vae_geometry
from twinflow_core.adapters.families import get_family
from twinflow_core.adapters.lora import export_lora
from twinflow_core.adapters.velocity import ADAPTER_META
from twinflow_core.data.prepared import file_sha256
from twinflow_core.errors import CheckpointError, ConfigError, DataError
from twinflow_core.files import member_name

FORMAT = "twinflow-latent-generator/1"
META = "model.json"  # the same name as the in-house nets' format (twinflow_core/nets/generator.py)
WEIGHTS = "model.safetensors"  # hard link to the transformer weights
LORA_DIR = "lora"


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

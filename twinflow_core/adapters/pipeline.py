"""A latent text-to-image generator: frozen text encoders + TransformerVelocity + frozen VAE decoder, with the
same `generate(captions, nfe, seed, style, cfg_scale)` -> uint8 (N, H, W, 3) as the in-house nets'
generator (twinflow_core.generator.Generator), so evaluation, the pyfunc model and `twinflow generate` need not
know which kind they hold.

`load_latent_generator` loads one from a folder in the format of twinflow_core/adapters/generator_files.py (a
training output, a wrapped base, or a registered version and the base it names); its text encoders and VAE run
through twinflow_core/adapters/codec.py. The command line (`wrap`) makes a downloaded pipeline folder a base
generator.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from twinflow_core.adapters.codec import decode_latents, encode_prompts, load_pipeline
from twinflow_core.adapters.generator_files import FORMAT, LORA_DIR, META, resolve_base, wrap_base
from twinflow_core.adapters.velocity import load_velocity
from twinflow_core.errors import DataError, TwinflowError, exit_code
from twinflow_core.generator import sample_images

CHUNK = 64


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

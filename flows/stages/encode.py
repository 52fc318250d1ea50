"""Stage `encode`: a prepared image-caption dataset -> latent shards, by the frozen VAE and text encoders of the
pretrained pipeline a latent experiment fine-tunes (model.source; conf/model/<family>.yaml).

    python -m flows.stages.encode [--params params.yaml] [--set encode.batch=16 ...]

The pipeline is train.init (model.source in the presets: the folder whose model.json dvc.yaml hashes). Reads
encode.data (data/prepared/<data.name>), writes encode.out (twinflow_core/data/latents.py: shards, the null
prompt's embeddings, meta.json with every shard's sha256; built beside the target and renamed into place).
Only a pretrained model (model.name diffusers) has latents: with the UNet this is a one-line error, and the
pipeline (flows/pipeline.py) does not run the stage unless train.data is encode.out.
Prints one summary line;
a user-fixable problem is one line on stderr, with its family's exit code (README, "Errors and exit codes").
"""

# Lazy imports: numpy, omegaconf, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import sys
import time

from flows.params import load_with_sets
from flows.quiet import quiet_loading_bars, quiet_third_party
from flows.stages._cli import stage_main, stage_parser
from twinflow_core.errors import ConfigError, DataError


def run(params: dict, where: str = "params.yaml") -> dict:
    import torch

    from twinflow_core.adapters.codec import load_pipeline
    from twinflow_core.data.latents import LatentEncoder, write_latents
    from twinflow_core.data.prepared import read_meta
    from twinflow_core.training.config import PretrainedModelConfig
    from twinflow_core.training.config_checks import load_sections

    sections = load_sections(params, where=where)
    model, enc = sections.model, sections.encode
    if not isinstance(model, PretrainedModelConfig):
        raise ConfigError(
            f"{where}: encode: model.name is {model.name!r}; latent shards are for a pretrained "
            f"diffusers model (model.name diffusers, conf/model/sd3.yaml)"
        )
    size = int(read_meta(enc.data).get("image_size", 0))
    if size != model.image_size:
        raise DataError(
            f"{enc.data}: images are {size} px, model.image_size is {model.image_size} "
            f"(prepare at data.image_size {model.image_size})"
        )
    threads = (params.get("train") or {}).get("threads") or 0
    if threads:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    pipeline = sections.train.init or model.source  # the folder dvc.yaml hashes (train.init)
    pipe = load_pipeline(pipeline, model.family, getattr(torch, model.dtype), transformer=False)  # VAE + text
    if torch.cuda.is_available():
        pipe.to("cuda")
    encoder = LatentEncoder(pipe, model.family, model.max_sequence_length)
    meta = write_latents(enc.data, enc.out, encoder, source=pipeline, batch=enc.batch, shard_size=enc.shard_size)
    seconds = time.perf_counter() - start
    print(
        f"encode: {meta['n']} images of {enc.data} -> {enc.out} ({model.family} latents {meta['latent_shape']}, "
        f"{len(meta['shards'])} shards) in {seconds:.1f} s"
    )
    return meta


def main(argv=None) -> int:
    quiet_third_party()
    args = stage_parser("encode", __doc__, "encode.batch=16").parse_args(argv)

    def body() -> None:
        quiet_loading_bars()
        run(load_with_sets(args.params, args.overrides), args.params)

    return stage_main("encode", body)


if __name__ == "__main__":
    sys.exit(main())

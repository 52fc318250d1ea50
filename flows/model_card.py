"""What a registered version holds (its MLflow artifact `checkpoint`), built from the training output.

A training output (train.out) keeps everything a resume needs (state.ckpt: optimiser, EMA, RNG) and, for a
pretrained diffusers model, the whole pipeline folder; all of it stays in the run's DVC outputs. A registered
version holds only what draws images: for the UNet, model.json + model.safetensors; for a latent model, the
trained transformer (full fine-tuning, optionally cast to bf16/fp16 by register.weights_dtype) or the LoRA
adapter, and a reference to the base pipeline it was trained from (source, path, the sha256 of the base's
model.json), which `twinflow generate` and the pyfunc resolve
(twinflow_core.adapters.generator_files.resolve_base).
Each gets MODEL_CARD.md: recipe, data hash, scores, base, and how to sample it in stock diffusers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from twinflow_core.adapters.families import FAMILIES
from twinflow_core.adapters.generator_files import base_reference, export_lean
from twinflow_core.loader import LATENT_FORMAT, META, WEIGHTS


def _recipe(params: dict) -> list[str]:
    model, train = params.get("model") or {}, params.get("train") or {}
    objective = ((params.get("objective") or {}).get("train")) or {}
    model_keys = ("name", "family", "source", "finetune", "lora_rank", "lora_alpha")
    train_keys = ("steps", "batch_size", "micro_batch", "lr", "ema_decay", "seed", "init", "data")
    lines = [
        f"- model: {json.dumps({k: model[k] for k in model_keys if k in model}, sort_keys=True)}",
        f"- objective: {objective.get('preset', '?')} {json.dumps(objective.get('overrides') or {}, sort_keys=True)}",
        f"- train: {json.dumps({k: train[k] for k in train_keys if k in train}, sort_keys=True)}",
    ]
    return lines


def card(params: dict, scores: dict, tags: dict, meta: dict, base: dict | None, dtype: str) -> str:
    lines = [
        "# TwinFlow generator",
        "",
        "## Recipe",
        *_recipe(params),
        "",
        "## Lineage",
        f"- data: {tags.get('lineage.data_path', '?')} md5 {tags.get('lineage.data_md5', '?')}",
        f"- training output: {tags.get('lineage.checkpoint_path', '?')} md5 "
        f"{tags.get('lineage.checkpoint_md5', '?')} (optimiser and EMA state stay there, in the DVC outputs)",
        f"- git: {tags.get('lineage.git_ref', tags.get('git.commit', '?'))}",
        "",
    ]
    if base:
        lines += [f"- base pipeline: {base['source']} (model.json sha256 {base['model_json_sha256']})", ""]
    lines += [
        "## Scores",
        *[f"- {k}: {v:.4g}" for k, v in sorted(scores.items()) if "@" in k and "_se@" not in k][:40],
        "",
    ]
    if meta.get("format") == LATENT_FORMAT:
        src = base["source"] if base else "BASE"
        family = FAMILIES.get(meta.get("family"))
        cls = family.pipeline_class if family else "DiffusionPipeline"
        lines += [
            "## Sampling",
            "",
            "In this project (1, 2 or 4 NFE, the TwinFlow sampler):",
            "",
            '    twinflow generate "a photo of a red circle" --model models:/NAME/VERSION --nfe 1',
            "",
            "In stock diffusers (one step, approximately the project's 1 NFE; 2 and 4 NFE need the project's sampler):",
            "",
            "    import diffusers",
            f'    pipe = diffusers.{cls}.from_pretrained("{src}")',
        ]
        if meta.get("lora"):
            lines += ['    pipe.load_lora_weights("THIS_FOLDER/lora")']
        else:
            lines += [
                f'    pipe.transformer = type(pipe.transformer).from_pretrained("THIS_FOLDER", '
                f'subfolder="transformer", torch_dtype=pipe.dtype)  # weights {dtype}',
                '    # the r embedding is dropped by the stock class ("weights not used"): its 1 step is '
                "z - F(z, 1, 1), close to but not the project's 1 NFE",
            ]
        lines += [
            '    image = pipe("a photo of a red circle", num_inference_steps=1, guidance_scale=0.0).images[0]',
            "",
        ]
    return "\n".join(lines) + "\n"


def lean_version(root: Path, checkpoint: Path, out: Path, params: dict, scores: dict, tags: dict) -> Path:
    """The folder registered as the version (see the module doc), built in `out`."""
    meta = json.loads((checkpoint / META).read_text())
    dtype = str(((params.get("register") or {}).get("weights_dtype")) or "float32")
    if meta.get("format") == LATENT_FORMAT:
        train = params.get("train") or {}
        source = str(train.get("init") or (params.get("model") or {}).get("source"))
        base = base_reference(root / source, source)
        return export_lean(checkpoint, out, base, card(params, scores, tags, meta, base, dtype), dtype)
    out.mkdir(parents=True, exist_ok=True)
    for name in (META, WEIGHTS):
        shutil.copyfile(checkpoint / name, out / name)
    (out / "MODEL_CARD.md").write_text(card(params, scores, tags, meta, None, "float32"))
    return out

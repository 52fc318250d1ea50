"""Where a pretrained diffusers model comes from, checked before any stage runs.

model.source, train.init and evaluate.base of a latent experiment (model.name diffusers) may name:
- a local pipeline folder made a base generator (`python -m twinflow_core.adapters.pipeline wrap`: model.json);
- a DVC-tracked folder (`dvc add models/X`: models/X.dvc), which an isolated run checks out of the shared cache
  (flows/workspace.py) and an in-place run finds in the checkout;
- a hub id (org/name) already in huggingface_hub's cache: it is resolved to its snapshot folder
  (.../models--org--name/snapshots/<revision>), made a base generator there once, and the run's params.yaml
  names that folder, so dvc.lock records the revision that ran. Nothing is downloaded by a run: a hub id not in
  the cache is one line naming it and the download command (offline or not: a model of tens of GB is fetched
  on purpose, not as a side effect).
Anything else is one line naming the key and the value, before Prefect, DVC or a stage starts.
huggingface_hub, and torch with the pipeline wrapper, are imported where a hub id is resolved or a folder wrapped:
they take seconds to import, and this check runs before every run.
"""

# Lazy imports: huggingface_hub, numpy, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import re
from pathlib import Path

from flows.dotted import flatten
from flows.init_source import is_remote
from twinflow_core.errors import CheckpointError, ConfigError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
KEYS = ("model.source", "train.init", "evaluate.base")


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of `repo_id` (its `main` ref), or None. Reads the cache only."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json")
    return Path(found).parent if isinstance(found, str) else None


def download_hint(repo_id: str) -> str:
    return f"hf download {repo_id} --local-dir models/{repo_id.split('/')[-1]}"


def _values(params: dict) -> dict[str, str]:
    flat = flatten(params)
    skip = {flat.get("pretrain.out")}  # made by the pretrain stage of this very run
    return {
        k: str(flat[k])
        for k in KEYS
        if isinstance(flat.get(k), str) and flat[k] and flat[k] not in skip and not is_remote(flat[k])
    }


def check_sources(root: Path, params: dict, where: str) -> dict[str, str]:
    """Check each pipeline reference of a latent experiment; returns {key: snapshot folder} for hub ids (the
    overrides that point the run at the cache). Raises CheckpointError (one line) for what cannot be found."""
    model = params.get("model") or {}
    if model.get("name") != "diffusers":
        return {}
    family, size = model.get("family", "FAMILY"), model.get("image_size", "N")
    resolved: dict[str, str] = {}
    for key, value in _values(params).items():
        folder = Path(value) if Path(value).is_absolute() else root / value
        if (folder / "model.json").is_file():
            continue
        if (folder / "model_index.json").is_file():
            raise CheckpointError(
                f"{where}: {key} {value}: a diffusers pipeline not yet made a base generator (no "
                f"model.json); run `python -m twinflow_core.adapters.pipeline wrap {value} "
                f"--family {family} --image-size {size}`"
            )
        if folder.with_name(folder.name + ".dvc").is_file():
            continue  # DVC-tracked: an isolated run checks it out (flows/workspace.py)
        if folder.exists():
            raise CheckpointError(f"{where}: {key} {value}: not a diffusers pipeline folder (no model_index.json)")
        if HUB_ID.match(value):
            snapshot = hub_snapshot(value)
            if snapshot is None:
                from huggingface_hub import constants

                raise CheckpointError(
                    f"{where}: {key} {value}: no such folder here and not in the Hugging Face "
                    f"cache ({constants.HF_HUB_CACHE}); download it: `{download_hint(value)}`"
                )
            resolved[key] = str(snapshot)
            continue
        raise CheckpointError(f"{where}: {key} {value}: no such folder (nor {value}.dvc)")
    return resolved


def localise_hub(resolved: dict[str, str], params: dict, log=print) -> dict[str, str]:
    """Make each resolved snapshot folder a base generator (once: model.json in the snapshot, the weights'
    link beside it; the cache's own files are not changed) and return the overrides naming it."""
    from twinflow_core.adapters.generator_files import wrap_base

    model = params.get("model") or {}
    for key, snapshot in resolved.items():
        if not (Path(snapshot) / "model.json").is_file():
            # what the base generator records comes from the model section, never a guess (no family is assumed)
            for name in ("family", "image_size", "max_sequence_length"):
                if model.get(name) is None:
                    raise ConfigError(f"model.{name}: missing (conf/model/<family>.yaml sets it)")
            log(f"{key}: {snapshot} (Hugging Face cache, revision {Path(snapshot).name}) made a base generator")
            wrap_base(snapshot, model["family"], int(model["image_size"]), int(model["max_sequence_length"]))
    return dict(resolved)

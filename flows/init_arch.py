"""An init generator whose architecture is not the configured one is refused before any stage runs.

A stage that starts from `pretrain.init` / `train.init` builds the network its model.json describes, not the one
`model.*` in params.yaml describes: with a base of another width the run would train that other network while
params.yaml, dvc.lock and the run's record all say `model.channels: [32, 64, 64]`. So each configured `model.*` key
that the init's model.json also records (its `net` for `model.name`, its `net_kwargs` for the rest; `vocab_size` and
`max_len` come from the tokenizer, not from params.yaml) must agree, or the run stops in one line naming the init,
the keys and both values. A pretrained diffusers pipeline (model.name diffusers, a latent generator) is the model
itself and has no `model.*` architecture to compare.
"""

from __future__ import annotations

from pathlib import Path

from flows.init_source import is_remote
from twinflow_core.errors import CheckpointError
from twinflow_core.loader import is_latent
from twinflow_core.nets.generator import read_meta

_FROM_TOKENIZER = ("vocab_size", "max_len")


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def mismatches(meta: dict, model: dict) -> list[tuple[str, object, object]]:
    """(key, the init's value, params.yaml's value) for every `model.*` key the init records differently."""
    out = []
    if "name" in model and meta.get("net") != model["name"]:
        out.append(("name", meta.get("net"), model["name"]))
    kwargs = meta.get("net_kwargs") or {}
    for key, value in model.items():
        if key == "name" or key in _FROM_TOKENIZER or key not in kwargs:
            continue
        if not _same(kwargs[key], value):
            out.append((key, kwargs[key], value))
    return out


def check_init_architecture(init: str | Path, stage: str, model: dict | None, where: str, root: Path) -> None:
    """Raise CheckpointError when the generator at `init` (a local folder, relative to `root`) was built with
    another architecture than `model` (params.yaml's model section)."""
    if not isinstance(model, dict) or not model or model.get("name") == "diffusers":
        return
    folder = Path(root) / init
    if is_latent(folder):
        return
    differ = mismatches(read_meta(folder), model)
    if differ:
        shown = ", ".join(f"model.{k} {theirs!r} in the init vs {ours!r}" for k, theirs, ours in differ[:4])
        raise CheckpointError(
            f"{stage}.init {init}: made for another architecture than {where}'s model section ({shown}"
            f"{', ...' if len(differ) > 4 else ''}); set model.* to the init's (its model.json net_kwargs) "
            f"or pick an init of this architecture"
        )


def check_inits(params: dict, root: str | Path, where: str = "params.yaml") -> None:
    """check_init_architecture for pretrain.init and train.init when each is a local folder that no stage of this
    run makes (pretrain.out feeds train: it is built with model.* by construction); a remote one is checked once
    fetched (flows/pipeline.py localise_inits)."""
    model = params.get("model")
    made = {str((params.get("pretrain") or {}).get("out", "")).rstrip("/")}
    for stage in ("pretrain", "train"):
        init = (params.get(stage) or {}).get("init")
        if not isinstance(init, str) or not init or is_remote(init) or init.rstrip("/") in made:
            continue
        check_init_architecture(init, stage, model, where, Path(root))

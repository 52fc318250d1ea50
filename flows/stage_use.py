"""Which optional stages a configuration runs, and params.yaml's `optional_stages` that tells DVC.

`pretrain` makes a fresh base (the default fine-tunes the committed one in artifacts/bases/) and `encode` makes
latent shards (only a pretrained diffusers model reads them). dvc.yaml declares each through a `matrix` over
optional_stages.<stage>: [] declares no stage, so that `dvc status` and a plain `dvc repro` see only the stages the
configuration uses (a declared but unused stage shows as changed forever, and `dvc repro` would run it); [used]
declares `<stage>@used`. The lists follow from other keys (`wanted`); configure writes them, the flow writes them
into a run workspace's params.yaml, and refuses an in-place run whose params.yaml disagrees.
"""

from __future__ import annotations

from twinflow_core.errors import ConfigError

OPTIONAL = ("pretrain", "encode")
KEY = "optional_stages"
USED = ["used"]


def _norm(value) -> str:
    return str(value or "").strip().rstrip("/")


def base_unused(params: dict) -> str:
    """Why this run needs no `pretrain` ("" when it does): neither train.init nor evaluate.base is its output.

    The default fine-tunes the committed base (artifacts/bases/), so the stage runs only when a run asks for a
    fresh base (`train.init=checkpoints/base`, as the smoke and digits experiments do)."""
    out = _norm((params.get("pretrain") or {}).get("out"))
    readers = {
        "train.init": _norm((params.get("train") or {}).get("init")),
        "evaluate.base": _norm((params.get("evaluate") or {}).get("base")),
    }
    if not out or out in readers.values():
        return ""
    return f"train.init is {readers['train.init']}, evaluate.base is {readers['evaluate.base']}, not {out}"


def encode_unused(params: dict) -> str:
    """Why this run needs no `encode` ("" when it does): train.data is not its latent shards (encode.out).
    Only a pretrained diffusers model trains on latents (conf/experiment/sd3_tiny.yaml)."""
    out = _norm((params.get("encode") or {}).get("out"))
    data = _norm((params.get("train") or {}).get("data"))
    return "" if out and out == data else f"train.data is {data}, not the latent shards {out or '(no encode.out)'}"


def wanted(params: dict) -> dict[str, list[str]]:
    """{stage: [] or ["used"]} for the optional stages, from the keys that decide them."""
    unused = {"pretrain": base_unused(params), "encode": encode_unused(params)}
    return {stage: [] if unused[stage] else list(USED) for stage in OPTIONAL}


def current(params: dict) -> dict[str, list[str]] | None:
    """params.yaml's optional_stages (None: a params.yaml without the key, whose dvc.yaml declares every stage)."""
    value = params.get(KEY)
    if value is None:
        return None
    return {stage: list((value or {}).get(stage) or []) for stage in OPTIONAL}


def overrides(params: dict) -> dict[str, list[str]]:
    """{optional_stages.<stage>: list} for the lists that differ from `wanted` ({} when in step, or no such key)."""
    have = current(params)
    if have is None:
        return {}
    want = wanted(params)
    return {f"{KEY}.{stage}": want[stage] for stage in OPTIONAL if have[stage] != want[stage]}


def check(params: dict, where: str) -> None:
    """ConfigError naming the first list that disagrees with the keys that decide it."""
    for key, value in overrides(params).items():
        stage = key.split(".")[1]
        why = {"pretrain": "train.init or evaluate.base is pretrain.out", "encode": "train.data is encode.out"}[stage]
        raise ConfigError(
            f"{where}: {key} is {current(params)[stage]} but should be {value} ({stage} runs exactly "
            f"when {why}); run `python -m flows.stages.configure` or set it, or pass the change as "
            f"a run override (a run workspace gets the list set)"
        )


def is_stage(name: str, stage: str) -> bool:
    """Whether a DVC stage name (`train`, `pretrain@used`) is `stage`."""
    return name.split("@", 1)[0] == stage

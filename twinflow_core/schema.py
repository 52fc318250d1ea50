"""The declaration of every params.yaml key the library reads: type, range or choices, default and a line of help.

One row per key (`Key`). The library's sections live here (data, model, objective, pretrain, train, encode,
evaluate, and the composition-only `trainer` and `data.path` of conf/); the orchestration sections (validate,
gate, register, pipeline, optional_stages) are declared beside the flow (flows/schema.py), which also writes the
reference table docs/params.md. The typed configs (training/config.py, data/config.py) take their defaults from
these rows, and `check_section` checks a section's values against the rows' choices and bounds, so a default, a
choice or a bound is written once; tests/test_params_schema.py fails when a key of params.yaml or conf/ has no row,
or a default here differs from the value conf/ composes.

A default is the recipe's value, the one conf/'s default composition writes into params.yaml. `REQUIRED` marks a
key whose value conf/ or the user owns: it has no code default (a typed config's field is OmegaConf's mandatory
missing value, so a params.yaml without the key is an error naming it). A path part `*` matches any one name (a
metric name, a stage); a `mapping` key holds free keys that the row does not declare one by one (a preset's
overrides, the official scorers' options).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from omegaconf import MISSING

from twinflow_core.errors import ConfigError


class _Required:
    """The one "no code default" marker (copies are itself, so `is REQUIRED` holds after a deepcopy)."""

    def __repr__(self) -> str:
        return "REQUIRED"

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


REQUIRED: Any = _Required()

# type name -> the Python types a YAML value of that type may have (an int stands for a float, never a bool)
TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
    "mapping": (dict,),
}


ITEM_WORDS = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings"}  # a list's items


def is_a(value: Any, types: tuple[type, ...]) -> bool:
    """`value` has one of `types` (a TYPES entry); a bool is not a number, though Python says it is an int."""
    return isinstance(value, types) and (not isinstance(value, bool) or bool in types)


@dataclass(frozen=True)
class Key:
    path: str  # dotted, e.g. "train.steps"
    type: str  # a TYPES name
    default: Any = REQUIRED
    help: str = ""
    choices: tuple = ()
    low: float | None = None  # value >= low (> low when low_open)
    high: float | None = None  # value <= high (< high when high_open)
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False  # null is a value (unset)
    variant: str = ""  # model rows only: "unet" (an in-house net) or "diffusers"
    conf_only: bool = False  # a key of conf/'s composition that params.yaml does not carry
    tracked: bool = True  # a training stage's key that changes the weights (dvc.yaml lists it)
    nonempty: bool = False  # a string that must not be empty
    length: int = 0  # a list of exactly this many items (0: any); low/high then bound each item
    item: str = ""  # a list whose every item has this TYPES name ("": any)

    def range_text(self) -> str:
        if self.nonempty:
            return "non-empty"
        if self.choices:
            return " | ".join(repr(c) if c == "" else str(c) for c in self.choices)
        bounds = ""
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bounds = f"{lo}{self.low:g}, {self.high:g}{hi}"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            bounds = f"{'<' if self.high_open else '<='} {self.high:g}"
        if self.type == "list" and (self.length or bounds or self.item):
            each = f" in {bounds}" if bounds.startswith(("[", "(")) else (f" {bounds}" if bounds else "")
            items = ITEM_WORDS.get(self.item, "items")
            return f"{self.length} values{each}" if self.length else f"{items}{each}"
        return bounds

    def in_range(self, value) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, list):
            return (not self.length or len(value) == self.length) and all(self._in_bounds(v) for v in value)
        return self._in_bounds(value)

    def _in_bounds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # not a number: the section's type check names it
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def problem(self, value) -> str | None:
        """Why `value` is outside this row's choices, bounds or non-emptiness (None when inside). Types are the
        section's loader's to check (OmegaConf, data/config.py build_config, flows/config_check.py); null is a
        type question too (`nullable`)."""
        if value is None:
            return None
        if self.nonempty and not value:
            return "must not be empty"
        if self.item and isinstance(value, list) and not all(is_a(v, TYPES[self.item]) for v in value):
            return f"expected a list of {ITEM_WORDS[self.item]}, got {value!r}"
        if self.in_range(value):
            return None
        return f"expected {'one of ' if self.choices else ''}{self.range_text()}, got {value!r}"


def K(path: str, type: str, default: Any = REQUIRED, help: str = "", **kw) -> Key:  # noqa: A002
    return Key(path, type, default, help, **kw)


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
LR_SCHEDULES = ("constant", "cosine", "linear")
# how the target-time (r) embedding starts when a stage fine-tunes an init: keep (an in-house net: as built; a
# diffusers model: its family's official rule), normal (N(0, 0.02), official SD3.5 / SANA), copy (of the t
# embedding, official Qwen-Image)
R_EMBED_INITS = ("keep", "normal", "copy")
# the names these had before: the stage's copy_t, and a diffusers model's own key model.r_init ("" = keep)
DEPRECATED_R_EMBED_INITS = {"copy_t": "copy"}
FINETUNE_MODES = ("full", "lora")
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
DATA_SOURCES = ("shapes", "digits", "imagefolder")

DATA = [
    K("data.name", "str", "shapes", "dataset directory data/prepared/<name>; the source when data.source is unset"),
    K(
        "data.source",
        "str",
        None,
        "where the images come from (default: data.name)",
        nullable=True,
        choices=(None, *DATA_SOURCES),
    ),
    K("data.image_size", "int", 24, "pixels (conf/data/<name>.yaml)", low=8, high=1024),
    K("data.seed", "int", 0, "seed of the generated dataset and its split"),
    K("data.shard_size", "int", 4096, "images per .npz shard", low=1),
    K("data.shapes.n_images", "int", 16000, "images the shapes world draws", low=1),
    K(
        "data.shapes.holdout_dir",
        "str",
        "data/prompts",
        "evaluation prompt sets kept out of training captions",
        nullable=True,
    ),
    K("data.shapes.mix", "mapping", None, "caption kind -> weight (null: the shapes world's own mix)", nullable=True),
    K("data.digits", "mapping", {}, "sklearn's digits: no options"),
    K("data.imagefolder.path", "str", "", "local folder or s3://bucket/prefix with images + metadata.jsonl"),
    K("data.imagefolder.strict", "bool", False, "every image must already be image_size x image_size RGB"),
    K("data.imagefolder.min_size", "int", 16, "images whose shorter side is below this are an error"),
    K(
        "data.imagefolder.endpoint_url",
        "str",
        None,
        "S3 endpoint (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)",
        nullable=True,
    ),
    K("data.imagefolder.storage_options", "mapping", {}, "extra s3fs options (never logged)"),
    K("data.path", "str", "data/prepared/shapes", "conf/ only: the prepared folder training reads", conf_only=True),
]

_UNET = dict(variant="unet")
MODEL_UNET = [
    K("model.name", "str", "unet", "a registered in-house net, or 'diffusers' for a pretrained pipeline", **_UNET),
    K("model.image_size", "int", 24, "pixels (conf/: ${data.image_size})", low=1, **_UNET),
    K("model.patch", "int", 2, "patch stem folding (image_size must divide by it)", low=1, **_UNET),
    K("model.channels", "list", [32, 64, 64], "channels per resolution level", item="int", **_UNET),
    K("model.res_blocks", "int", 1, "residual blocks per level", low=0, **_UNET),
    K("model.attn_levels", "list", [2], "levels (indices of channels) with attention", item="int", **_UNET),
    K("model.text_dim", "int", 64, "caption encoder width", low=1, **_UNET),
    K("model.text_layers", "int", 2, "caption encoder layers", low=0, **_UNET),
    K("model.heads", "int", 4, "attention heads (channels and text_dim divide by it)", low=1, **_UNET),
    K("model.time_dim", "int", 128, "time embedding width", low=1, **_UNET),
    K("model.out_skip", "bool", True, "F = c(|t|) x_t + net (nets/unet.py)", **_UNET),
    K("model.sigma_data", "float", 0.5, "data scale in c(t)", low=0, low_open=True, **_UNET),
    K(
        "model.time_sign",
        "str",
        "signed",
        "signed (official) or learned sign vector (nets/embeddings.py)",
        choices=("signed", "learned"),
        **_UNET,
    ),
]

_DIFF = dict(variant="diffusers")
MODEL_DIFFUSERS = [
    K("model.name", "str", "diffusers", "a pretrained diffusers text-to-image pipeline", **_DIFF),
    K(
        "model.family",
        "str",
        REQUIRED,
        "an adapter row (twinflow_core/adapters/families.py): sd3 | qwen_image | sana",
        **_DIFF,
    ),
    K("model.source", "str", REQUIRED, "the pipeline: a local folder (or a hub id)", nonempty=True, **_DIFF),
    K(
        "model.finetune",
        "str",
        "full",
        "full: a second (r) embedding; lora: peft adapter, t - r/2",
        choices=FINETUNE_MODES,
        **_DIFF,
    ),
    K("model.lora_rank", "int", 64, "LoRA rank", low=1, **_DIFF),
    K("model.lora_alpha", "float", 64.0, "LoRA alpha", low=0, low_open=True, **_DIFF),
    K("model.lora_targets", "list", [], "empty: the family's official targets (adapters/lora.py)", item="str", **_DIFF),
    K("model.gradient_checkpointing", "bool", True, "recompute activations in the backward pass", **_DIFF),
    K(
        "model.dtype",
        "str",
        "float32",
        "the weights as loaded (full fine-tuning needs float32)",
        choices=WEIGHT_DTYPES,
        **_DIFF,
    ),
    K("model.image_size", "int", REQUIRED, "pixels (conf/: ${data.image_size})", low=8, **_DIFF),
    K("model.max_sequence_length", "int", REQUIRED, "prompt tokens for the text encoders", low=1, **_DIFF),
]

OBJECTIVE = [
    K("objective.*.preset", "str", REQUIRED, "a method of twinflow_core/objectives: twinflow | rcgm | fm | meanflow"),
    K("objective.*.overrides", "mapping", REQUIRED, "fields of the preset's config (conf/objective/<preset>.yaml)"),
]

TRAINER = [
    K("trainer.accelerator", "str", "cpu", "Lightning accelerator", choices=ACCELERATORS),
    K("trainer.devices", "int", 1, "devices per node", low=1),
    K("trainer.num_nodes", "int", 1, "nodes", low=1),
    K("trainer.strategy", "str", "auto", "auto | ddp | ddp_spawn | fsdp", choices=STRATEGIES),
    K("trainer.precision", "str", "32-true", "Lightning precision", choices=PRECISIONS),
]

# A training stage's keys, declared once for both stages; the REQUIRED ones are the recipe's, which conf/config.yaml
# gives each stage.
STAGE = [
    K("data", "str", REQUIRED, "a prepared dataset folder (conf/: ${data.path})"),
    K("out", "str", REQUIRED, "generator export + final training state"),
    K(
        "init",
        "str",
        REQUIRED,
        "a generator to start from (train: the base): folder, s3://, models:/name@alias",
        nullable=True,
    ),
    K("steps", "int", REQUIRED, "optimiser steps", low=1),
    K("batch_size", "int", 64, "global batch per optimiser step", low=1),
    K(
        "micro_batch",
        "int",
        0,
        "rows per forward, from 1; 0: two halves on 1-2 processes (bitwise equal on both), else one per process",
        low=0,
    ),
    K("lr", "float", 0.001, "learning rate", low=0, low_open=True),
    K(
        "lr_schedule",
        "str",
        REQUIRED,
        "constant, or down to 0 at the last step (cosine | linear)",
        choices=LR_SCHEDULES,
    ),
    K("lr_warmup", "int", 0, "steps rising linearly from 0 (fewer than steps)", low=0),
    K("betas", "list", [0.9, 0.99], "Adam betas", length=2, low=0, high=1, high_open=True, item="float"),
    K("weight_decay", "float", 0.0, "AdamW weight decay", low=0),
    K("ema_decay", "float", REQUIRED, "EMA of the weights (the teacher); 0: none (fsdp)", low=0, high=1),
    K(
        "export_ema_decay",
        "float",
        0.0,
        "> 0: export a slower average of the online weights",
        low=0,
        high=1,
        high_open=True,
    ),
    K("grad_clip", "float", 1.0, "gradient norm clip", low=0, low_open=True),
    K(
        "cond_drop",
        "float",
        REQUIRED,
        "fraction of captions replaced by the null caption",
        low=0,
        high=1,
        high_open=True,
    ),
    K(
        "r_embed_init",
        "str",
        "keep",
        "with an init: how its r embedding starts (keep: as built / the family's rule; copy_t and model.r_init:"
        " deprecated)",
        choices=R_EMBED_INITS,
    ),
    K("seed", "int", REQUIRED, "training seed"),
    K("trainer", "mapping", REQUIRED, "Lightning placement: the trainer.* keys (conf/trainer/<name>.yaml)"),
    K("ckpt_every", "int", REQUIRED, "resumable training state every N steps", low=1, tracked=False),
    K("sample_every", "int", REQUIRED, "1-NFE sample grid every N steps; 0 = only at the end", low=0, tracked=False),
    K("log_every", "int", 10, "log every N steps", low=1, tracked=False),
    K("resume_dir", "str", "outputs/resume", "scratch: periodic states, keyed by the config's hash", tracked=False),
    K("progress", "bool", True, "progress bar", tracked=False),
    K("threads", "int", 0, "torch CPU threads per process; 0 = torch's default", low=0, tracked=False),
]


def stage_rows(stage: str) -> list[Key]:
    """The STAGE rows under `stage.` (pretrain, train)."""
    return [replace(k, path=f"{stage}.{k.path}") for k in STAGE]


ENCODE = [
    K("encode.data", "str", "data/prepared/shapes", "the prepared image-caption dataset (conf/: ${data.path})"),
    K("encode.out", "str", "data/prepared/shapes-latents", "latent shards (conf/: data/prepared/${data.name}-latents)"),
    K("encode.batch", "int", 32, "images per encoder call", low=1),
    K("encode.shard_size", "int", 1024, "rows per latent shard", low=1),
]

EVALUATE = [
    # the stage's paths (flows/stages/evaluate.py STAGE_KEYS)
    K("evaluate.checkpoint", "str", "checkpoints/twinflow", "the generator evaluated"),
    K("evaluate.base", "str", "artifacts/bases/shapes24-fm", "the flow-matching reference generator"),
    K("evaluate.metrics", "str", "metrics/eval.json", "the metrics file (DVC metrics)"),
    K("evaluate.breakdown", "str", "metrics/eval_breakdown.json", "per-tag / per-category scores"),
    K("evaluate.plots_dir", "str", "metrics/plots", "DVC plots"),
    K("evaluate.reports_dir", "str", "reports", "sample grids samples_<n>nfe.png and samples_base/"),
    K("evaluate.base_cache", "str", "outputs/eval-base", "the base's evaluation keyed by its inputs' hash; '' = none"),
    K("evaluate.official.enabled", "bool", False, "score with the official GenEval / DPG-Bench scorers"),
    K("evaluate.official.geneval", "mapping", {}, "{checkout, python, weights, env, prompts?, ...}"),
    K("evaluate.official.dpg", "mapping", {}, "{checkout, python, env, csv?, prompts_dir?, ...}"),
    # EvalConfig (twinflow_core/benchmarks/protocol.py)
    K(
        "evaluate.domain",
        "str",
        "auto",
        "shapes | digits | auto (from the checkpoint's vocabulary)",
        choices=("shapes", "digits", "auto"),
    ),
    K("evaluate.prompts_dir", "str", "data/prompts", "the prompt sets"),
    K("evaluate.evaluators_dir", "str", "artifacts/evaluators", "the shapes / digits detectors"),
    K("evaluate.nfe", "list", [1, 2, 4], "steps the generator is scored at", low=1, item="int"),
    K("evaluate.style", "str", "few", "sampler style of the generator"),
    K("evaluate.base_nfe", "list", [1, 2, 4], "the base sampled with few Euler steps", low=1, item="int"),
    K("evaluate.base_steps", "int", 50, "Euler steps of the many-step reference; 0 skips it", low=0),
    K("evaluate.base_cfg", "list", [0.5], "guidance scales of the reference", item="float"),
    K(
        "evaluate.ratio_reference",
        "str",
        REQUIRED,
        "the base setting ratio/... metrics divide by (from base_steps, base_cfg); '' (the code's) = none",
    ),
    K("evaluate.images_per_prompt", "int", 4, "samples per prompt (diversity needs >= 2)", low=2),
    K("evaluate.geneval_max_prompts", "int", 0, "0: all 132; else an even spread over the tags", low=0),
    K("evaluate.dpg_max_items", "int", 0, "0: all 64", low=0),
    K("evaluate.reference_max_prompts", "int", 0, "prompt cap of the many-step reference; 0: all", low=0),
    K("evaluate.digits_per_class", "int", 10, "digits images per class", low=1),
    K("evaluate.grid_prompts", "int", 16, "prompts in each sample grid", low=1),
    K("evaluate.seed", "int", 0, "sampling seed"),
    K("evaluate.batch", "int", 64, "captions per generate() call", low=1),
]


def library_keys() -> list[Key]:
    """Every row of the library's sections, the two stages expanded."""
    return [
        *DATA,
        *MODEL_UNET,
        *MODEL_DIFFUSERS,
        *OBJECTIVE,
        *TRAINER,
        *stage_rows("pretrain"),
        *stage_rows("train"),
        *ENCODE,
        *EVALUATE,
    ]


def _under(rows: list[Key], prefix: str) -> dict[str, Key]:
    """{key: row} of the rows directly under `prefix.` ("": the rows whose path has no prefix, STAGE's)."""
    head = prefix + "." if prefix else ""
    return {k.path[len(head) :]: k for k in rows if k.path.startswith(head) and "." not in k.path[len(head) :]}


def section_defaults(rows: list[Key], prefix: str) -> dict[str, Any]:
    """{key: default} of the rows directly under `prefix.` (copies of lists and mappings)."""
    return {name: copy.deepcopy(k.default) for name, k in _under(rows, prefix).items()}


def types_of(rows: list[Key], prefix: str) -> dict[str, tuple[type, ...]]:
    """{key: accepted Python types} of the rows directly under `prefix.` (the form data/config.py checks)."""
    return {name: TYPES[k.type] for name, k in _under(rows, prefix).items()}


def check_value(k: Key, value: Any, where: str) -> None:
    """ConfigError `{where}: expected ..., got ...` (one line) when `value` is outside row `k`'s range."""
    problem = k.problem(value)
    if problem:
        raise ConfigError(f"{where}: {problem}")


def check_section(rows: list[Key], prefix: str, values: dict, where: str = "", shown: str = "") -> None:
    """Each of `values` (keys directly under `prefix`) against its row: the first outside its choices or bounds
    is a ConfigError `{where}: {shown}.{key}: expected ..., got ...`. `shown` names the section in the message
    (default: `prefix`; a stage's own name for the STAGE rows, whose prefix is ""). A key without a row, or a
    mapping's, is the loader's to refuse."""
    declared = _under(rows, prefix)
    for key, value in values.items():
        k = declared.get(key)
        if k is not None and k.type != "mapping":
            label = f"{shown or prefix}.{key}"
            check_value(k, value, f"{where}: {label}" if where else label)


def default_field(defaults: dict[str, Any], name: str, placeholder: Any = MISSING, tracked: bool = True):
    """A dataclass field whose default is `defaults[name]` (a copy for a list or mapping); a REQUIRED key takes
    `placeholder`: OmegaConf's mandatory missing value unless the section says otherwise."""
    value = defaults.get(name, REQUIRED)
    value = placeholder if value is REQUIRED else value
    meta = {} if tracked else {"metadata": {"tracked": False}}
    if isinstance(value, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(value), **meta)
    return field(default=value, **meta)


def row(rows: list[Key], path: str, variant: str = "") -> Key | None:
    """The row declaring the dotted `path` (a `*` part matches any name; a mapping row covers its free keys)."""
    parts = path.split(".")
    for k in rows:
        if variant and k.variant and k.variant != variant:
            continue
        decl = k.path.split(".")
        n = len(decl)
        if len(parts) < n or (len(parts) > n and k.type != "mapping"):
            continue
        if all(d in ("*", p) for d, p in zip(decl, parts)):
            return k
    return None

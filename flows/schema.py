"""The orchestration sections' declarations (validate, gate, register, pipeline, optional_stages) and the whole
table: the library's rows (twinflow_core/schema.py) plus these. Writes the reference table docs/params.md:

    python -m flows.schema            # rewrite docs/params.md
    python -m flows.schema --check    # exit 1 when docs/params.md is out of date
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from twinflow_core.data.config import build_config
from twinflow_core.errors import ConfigError
from twinflow_core.schema import (
    REQUIRED,
    TYPES,
    WEIGHT_DTYPES,
    K,
    Key,
    check_section,
    library_keys,
    row,
    section_defaults,
    types_of,
)

VALIDATE = [
    K("validate.max_caption_chars", "int", 400, "longest caption (characters)", low=1),
    K("validate.max_caption_words", "int", 48, "longest caption (words)", low=1),
    K("validate.min_pixel_std", "float", 2.0, "flatter images count as blank", low=0),
    K("validate.max_duplicate_fraction", "float", 0.01, "share of images whose pixels repeat an earlier one", low=0),
    K("validate.min_vocab_coverage", "float", 0.95, "share of vocabulary words some caption uses", low=0, high=1),
    K(
        "validate.share_bounds",
        "list",
        [0.5, 2.0],
        "each caption kind's / label's share relative to an even split: [low <= 1, high >= 1]",
        length=2,
        low=0,
        item="float",
    ),
]

_VALIDATE = section_defaults(VALIDATE, "validate")

GATE = [
    K("gate.min.*", "float", REQUIRED, "<metric of metrics/eval.json>: its minimum for promotion"),
    K("gate.ratio.*", "float", REQUIRED, "<metric>: minimum of evaluate's ratio/<metric> (0: reported)", low=0),
    K(
        "gate.champion_margin",
        "float",
        0.02,
        "a champion may be replaced by one >= (1 - margin) x its score",
        low=0,
        high=1,
        high_open=True,
    ),
]

REGISTER = [
    K("register.model_name", "str", "twinflow-shapes", "registered model name", nonempty=True),
    K("register.experiment", "str", "twinflow-pipeline", "MLflow experiment", nonempty=True),
    K(
        "register.tracking_uri",
        "str",
        "",
        "empty: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db",
        nullable=True,
    ),
    K("register.checkpoint", "str", "checkpoints/twinflow", "the generator registered", nonempty=True),
    K("register.metrics", "str", "metrics/eval.json", "the metrics the gate reads", nonempty=True),
    K(
        "register.artifacts",
        "list",
        ["reports/samples_*.png", "reports/data", "metrics/eval.json", "dvc.lock", "params.yaml"],
        "files logged with the run (globs)",
        item="str",
    ),
    K("register.weights_dtype", "str", "float32", "a full fine-tune's registered transformer", choices=WEIGHT_DTYPES),
]

PIPELINE = [
    K("pipeline.push", "bool", True, "dvc push after a successful run"),
    K("pipeline.dvc_remote", "str", "", "empty: DVC's default remote", nullable=True),
    K(
        "pipeline.git_remote",
        "str",
        "",
        "which git remote run refs go to ('' = origin, else the only one)",
        nullable=True,
    ),
    K("pipeline.push_ref", "bool", False, "git push the run's ref (TWINFLOW_PUSH_REF=1 also turns it on)"),
    K("pipeline.retries", "int", 3, "retries of transient faults (network, S3, tracking server)", low=0, high=20),
    K("pipeline.retry_delay_s", "float", 10.0, "first backoff; doubles each retry", low=0.0, high=3600.0),
]

OPTIONAL_STAGES = [
    K(
        "optional_stages.pretrain",
        "list",
        [],
        "[used] when this configuration runs pretrain (flows/stage_use.py)",
        item="str",
    ),
    K(
        "optional_stages.encode",
        "list",
        [],
        "[used] when this configuration runs encode (flows/stage_use.py)",
        item="str",
    ),
]


@dataclass
class ValidateConfig:
    """The `validate` section as the validate stage reads it (flows/stages/validate.py); rows: VALIDATE."""

    max_caption_chars: int = _VALIDATE["max_caption_chars"]
    max_caption_words: int = _VALIDATE["max_caption_words"]
    min_pixel_std: float = _VALIDATE["min_pixel_std"]
    max_duplicate_fraction: float = _VALIDATE["max_duplicate_fraction"]
    min_vocab_coverage: float = _VALIDATE["min_vocab_coverage"]
    share_bounds: tuple = tuple(_VALIDATE["share_bounds"])
    _types = types_of(VALIDATE, "validate")


def validate_config(raw) -> ValidateConfig:
    """The validate section checked (unknown key, wrong type: a one-line ConfigError naming it)."""
    cfg = build_config(ValidateConfig, raw, "validate")
    check_section(VALIDATE, "validate", raw or {})  # the rows' bounds
    low, high = cfg.share_bounds
    if not low <= 1 <= high:  # an even split must pass, or every dataset fails validation
        raise ConfigError(f"validate.share_bounds: expected [low <= 1, high >= 1], got {list(cfg.share_bounds)}")
    cfg.share_bounds = tuple(cfg.share_bounds)
    return cfg


# The evaluate section's keys that the stage reads itself (paths, the official scorers); the rest is EvalConfig's.
STAGE_KEYS = ("checkpoint", "base", "metrics", "breakdown", "plots_dir", "reports_dir", "official", "base_cache")


def split_section(section: dict) -> tuple[dict, dict]:
    """(stage paths/options, EvalConfig fields) of the evaluate section."""
    section = dict(section or {})
    return {k: section.pop(k) for k in STAGE_KEYS if k in section}, section


FLOW_KEYS = [*VALIDATE, *GATE, *REGISTER, *PIPELINE, *OPTIONAL_STAGES]


def all_keys() -> list[Key]:
    return [*library_keys(), *FLOW_KEYS]


def lookup(path: str, variant: str = "") -> Key | None:
    return row(all_keys(), path, variant)


def flat_schema(section: str) -> dict[str, tuple[tuple[type, ...], Key]]:
    """key -> (types, row) for a flat section (pipeline, register): the form flows/config_check.py checks (the
    row's choices and bounds by `Key.problem`)."""
    return {k.path.split(".", 1)[1]: (TYPES[k.type], k) for k in FLOW_KEYS if k.path.startswith(section + ".")}


def defaults(section: str) -> dict:
    return section_defaults(FLOW_KEYS, section)


def _cell(value) -> str:
    if value is None:
        return "null"
    text = repr(value) if value == "" else str(value)
    return f"`{text}`".replace("|", "\\|")


def _default_cell(k: Key, conf: dict) -> str:
    """The row's default; for a key without one, the value conf/config.yaml gives it (as written there: an
    interpolation names the key it copies; a mapping is left to the file)."""
    if k.default is not REQUIRED:
        return _cell(k.default)
    node = conf
    for part in k.path.split("."):
        if not isinstance(node, dict) or part not in node:
            return "(conf/ or user)"
        node = node[part]
    return "(conf/config.yaml)" if isinstance(node, dict) else f"{_cell(node)} (conf/config.yaml)"


def render() -> str:
    """docs/params.md: one table per section, in the order of params.yaml."""
    lines = [
        "# params.yaml reference",
        "",
        "Generated by `python -m flows.schema` from the declarations in twinflow_core/schema.py (the library's",
        "sections) and flows/schema.py (the orchestration's); do not edit by hand. Default: the recipe's value",
        "(what conf/'s default composition writes). No code default: `value (conf/config.yaml)`, the value that",
        "file gives (the only place it is written); `(conf/ or user)`, a group file of conf/ or the user gives it.",
        "`*` is any name; a `mapping` holds free keys. `model` rows are for an in-house net (unet) or a pretrained",
        "diffusers model.",
        "",
    ]
    conf = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "config.yaml").read_text())
    current = None
    for k in all_keys():
        section = k.path.split(".")[0]
        if section != current:
            current = section
            lines += ["", f"## {section}", "", "| key | type | range | default | |", "|---|---|---|---|---|"]
        kind = k.type + (" or null" if k.nullable else "")
        note = k.help.replace("|", "\\|")
        if k.variant:
            note = f"({k.variant}) {note}"
        if k.conf_only:
            note = f"{note} [conf/ only]"
        if not k.tracked:
            note = f"{note} [untracked]"
        rng = k.range_text().replace("|", "\\|")
        lines.append(f"| `{k.path}` | {kind} | {rng} | {_default_cell(k, conf)} | {note} |")
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def doc_path() -> Path:
    return Path(__file__).resolve().parents[1] / "docs" / "params.md"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not doc_path().is_file() or doc_path().read_text() != text:
            print(f"{doc_path()}: out of date; run python -m flows.schema", file=sys.stderr)
            return 1
        return 0
    doc_path().write_text(text)
    print(f"wrote {doc_path()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

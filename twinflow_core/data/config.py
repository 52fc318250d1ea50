"""The `data` section of params.yaml as validated dataclasses (unknown keys and wrong types are ConfigErrors).

data:
  name: shapes          # dataset directory data/prepared/<name>, the one training reads
  source: shapes        # shapes | digits | imagefolder (defaults to name)
  image_size: 32
  seed: 0
  shard_size: 4096
  shapes: {n_images: 16000, holdout_dir: data/prompts, mix: {...}}
  digits: {}
  imagefolder: {path: "", strict: false, min_size: 16, endpoint_url: null, storage_options: {}}
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from twinflow_core.errors import ConfigError
from twinflow_core.schema import DATA, DATA_SOURCES, check_section, is_a, section_defaults, types_of
from twinflow_core.schema import default_field as _d

SOURCES = DATA_SOURCES
# defaults and types: the rows of twinflow_core/schema.py DATA
_DATA, _SHAPES, _FOLDER = (section_defaults(DATA, p) for p in ("data", "data.shapes", "data.imagefolder"))


def build_config(cls, raw, where: str):
    """Instantiate dataclass `cls` from mapping `raw`, naming the unknown key or wrong type and where."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for key, value in raw.items():
        nested = getattr(cls, "_nested", {}).get(key)
        if nested is not None:
            kwargs[key] = build_config(nested, value, f"{where}.{key}")
            continue
        expected = getattr(cls, "_types", {}).get(key)
        types = expected if isinstance(expected, tuple) else (expected,)
        if expected is not None and value is not None and not is_a(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{where}.{key}: expected {names}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


@dataclass
class ShapesConfig:
    n_images: int = _d(_SHAPES, "n_images")
    holdout_dir: str | None = _d(_SHAPES, "holdout_dir")  # evaluation prompt sets kept out of training captions
    mix: dict | None = _d(_SHAPES, "mix")  # caption kind -> weight (shapes.DEFAULT_MIX when None)
    _types = types_of(DATA, "data.shapes")


@dataclass
class DigitsConfig:
    """No options: the whole set, in sklearn's order."""


@dataclass
class ImageFolderConfig:
    path: str = _d(_FOLDER, "path")  # local folder or s3://bucket/prefix holding images + metadata.jsonl
    strict: bool = _d(_FOLDER, "strict")  # every image must already be image_size x image_size RGB
    min_size: int = _d(_FOLDER, "min_size")  # smaller images (shorter side) are an error, not an upscale
    endpoint_url: str | None = _d(_FOLDER, "endpoint_url")  # S3 endpoint; else AWS_ENDPOINT_URL_S3 / ..._URL
    storage_options: dict = _d(_FOLDER, "storage_options")  # extra s3fs options (never logged)
    _types = types_of(DATA, "data.imagefolder")


@dataclass
class DataConfig:
    name: str = _d(_DATA, "name")
    source: str | None = _d(_DATA, "source")
    image_size: int = _d(_DATA, "image_size")
    seed: int = _d(_DATA, "seed")
    shard_size: int = _d(_DATA, "shard_size")
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)
    imagefolder: ImageFolderConfig = field(default_factory=ImageFolderConfig)
    _types = {k: v for k, v in types_of(DATA, "data").items() if k not in ("digits", "path")}
    _nested = {"shapes": ShapesConfig, "digits": DigitsConfig, "imagefolder": ImageFolderConfig}

    def __post_init__(self):
        self.source = self.source or self.name
        if self.source not in SOURCES:
            raise ConfigError(
                f"data.source: unknown source {self.source!r}; expected one of {SOURCES} "
                f"(data.source defaults to data.name)"
            )
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"data.name: {self.name!r} is not a usable directory name")
        check_section(DATA, "data", {"image_size": self.image_size, "shard_size": self.shard_size})
        if self.source == "shapes":
            check_section(DATA, "data.shapes", {"n_images": self.shapes.n_images})
        if self.source == "imagefolder" and not self.imagefolder.path:
            raise ConfigError(
                "data.imagefolder.path: required when data.source is imagefolder (a local folder or s3://bucket/prefix)"
            )

    @classmethod
    def from_dict(cls, raw) -> DataConfig:
        return build_config(cls, raw, "data")

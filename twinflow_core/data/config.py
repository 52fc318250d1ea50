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

SOURCES = ("shapes", "digits", "imagefolder")


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
        f = known[key]
        nested = getattr(cls, "_nested", {}).get(key)
        if nested is not None:
            kwargs[key] = build_config(nested, value, f"{where}.{key}")
            continue
        expected = getattr(cls, "_types", {}).get(key)
        types = expected if isinstance(expected, tuple) else (expected,)
        if expected is not None and value is not None and (
                not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{where}.{key}: expected {names}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


@dataclass
class ShapesConfig:
    n_images: int = 16000
    holdout_dir: str | None = "data/prompts"   # evaluation prompt sets kept out of training captions
    mix: dict | None = None                     # caption kind -> weight (shapes.DEFAULT_MIX when None)
    _types = {"n_images": int, "holdout_dir": str, "mix": dict}


@dataclass
class DigitsConfig:
    """No options: the whole set, in sklearn's order."""


@dataclass
class ImageFolderConfig:
    path: str = ""                  # local folder or s3://bucket/prefix holding images + metadata.jsonl
    strict: bool = False            # every image must already be image_size x image_size RGB
    min_size: int = 16              # smaller images (shorter side) are an error, not an upscale
    endpoint_url: str | None = None  # S3 endpoint; else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
    storage_options: dict = field(default_factory=dict)  # extra s3fs options (never logged)
    _types = {"path": str, "strict": bool, "min_size": int, "endpoint_url": str, "storage_options": dict}


@dataclass
class DataConfig:
    name: str = "shapes"
    source: str | None = None
    image_size: int = 32
    seed: int = 0
    shard_size: int = 4096
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    digits: DigitsConfig = field(default_factory=DigitsConfig)
    imagefolder: ImageFolderConfig = field(default_factory=ImageFolderConfig)
    _types = {"name": str, "source": str, "image_size": int, "seed": int, "shard_size": int}
    _nested = {"shapes": ShapesConfig, "digits": DigitsConfig, "imagefolder": ImageFolderConfig}

    def __post_init__(self):
        self.source = self.source or self.name
        if self.source not in SOURCES:
            raise ConfigError(f"data.source: unknown source {self.source!r}; expected one of {SOURCES} "
                              f"(data.source defaults to data.name)")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"data.name: {self.name!r} is not a usable directory name")
        if not 8 <= self.image_size <= 1024:
            raise ConfigError(f"data.image_size: expected 8..1024, got {self.image_size}")
        if self.shard_size < 1:
            raise ConfigError(f"data.shard_size: expected >= 1, got {self.shard_size}")
        if self.source == "shapes" and self.shapes.n_images < 1:
            raise ConfigError(f"data.shapes.n_images: expected >= 1, got {self.shapes.n_images}")
        if self.source == "imagefolder" and not self.imagefolder.path:
            raise ConfigError("data.imagefolder.path: required when data.source is imagefolder "
                              "(a local folder or s3://bucket/prefix)")

    @classmethod
    def from_dict(cls, raw) -> DataConfig:
        return build_config(cls, raw, "data")

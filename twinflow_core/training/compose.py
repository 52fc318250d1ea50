"""Hydra composition of conf/ into the training sections: `compose(overrides)` composes conf/config.yaml against
the structured config `training_schema` (ComposedConfig: the sections of training/config.py plus the keys that exist
only during composition) and checks the result with load_sections (training/config_checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from twinflow_core.errors import ConfigError
from twinflow_core.training.config import TrainerConfig, TrainingSections
from twinflow_core.training.config_checks import load_sections, one_line


@dataclass
class DataChoice:
    """Which prepared dataset training reads; `configure` keeps params.yaml's data.name/image_size in step. Every
    value is conf/data/<name>.yaml's."""

    name: str = MISSING
    source: str = MISSING
    image_size: int = MISSING
    path: str = MISSING


@dataclass
class ComposedConfig(TrainingSections):
    # any mapping here: load_sections validates it against the schema its `name` selects (UNet or diffusers)
    model: Any = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataChoice = field(default_factory=DataChoice)
    # keys of params.yaml's stage-owned sections an experiment sets (e.g. a tiny model's gate); `configure` writes
    # them in place; empty: params.yaml's values stay
    evaluate: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)


def conf_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str] | None = None, config_dir: str | Path | None = None) -> tuple[TrainingSections, dict]:
    """Compose conf/ with Hydra overrides; returns (validated sections, {"data": DataChoice as dict}).

    Unknown keys, wrong types and unknown group options are ConfigErrors (one line)."""
    ConfigStore.instance().store(name="training_schema", node=ComposedConfig)
    directory = Path(config_dir) if config_dir else conf_dir()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory.resolve()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides or []))
        plain = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"conf/ {' '.join(overrides or [])}: {one_line(err)}") from None
    finally:
        GlobalHydra.instance().clear()
    unknown = sorted(set(plain) - {f.name for f in fields(ComposedConfig)})
    if unknown:
        raise ConfigError(f"conf/ {' '.join(overrides or [])}: unknown top-level key(s) {unknown}")
    extra = {key: plain.pop(key) for key in ("data", "trainer", "evaluate", "gate")}
    return load_sections(plain, where=f"conf/ {' '.join(overrides or [])}".strip()), extra

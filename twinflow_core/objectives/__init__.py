"""The objective registry: every training method the project knows, by name.

A method is one module in this package that calls `register(Method(...))` at import, plus one config in
conf/objective/<name>.yaml (`preset: <name>`); training (`objective.train.preset` / `objective.pretrain.preset`),
`twinflow toy --method`, the benchmarks and the method table look methods up here and need no other change.

    Method(name, config_cls, objective_cls, preset={...}, sampler={...})

- `config_cls`: a dataclass with `from_dict(values)` (validating; unknown keys are a ConfigError), `to_dict()`;
  `preset` holds the values of this method on top of its defaults (methods may share a config class: the
  TwinFlow family, twinflow.py, is three presets of ObjectiveConfig).
- `objective_cls(cfg)`: a callable `loss, stats = objective(net, x, cond, uncond=..., ema=...)` for one batch,
  the net's signature F(x_t, t, r, cond) (twinflow_core/objective.py has the time convention).
- `sampler`: keyword arguments of twinflow_core.sampler.sample for this method's few-step samples
  (style "euler": plain Euler, the flow-matching reference).
- `toy`: overrides the 2-D benchmark applies on top of the preset (the TwinFlow family trains the toy with L2,
  as the official MNIST tutorial).

Modules here are imported on the first lookup (twinflow.py first, then in name order), so a new file needs no
import elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from twinflow_core.errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    objective_cls: type
    preset: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=lambda: {"style": "few"})
    toy: dict = field(default_factory=dict)
    summary: str = ""

    def config(self, **overrides):
        """This method's config: the preset's values, then `overrides` (validated by the config class)."""
        return self.config_cls.from_dict({**self.preset, **overrides})


_METHODS: dict[str, Method] = {}
_LOADED = False


def register(method: Method) -> Method:
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"objective {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    # the TwinFlow family first (the project's default), then the others in name order
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: (i.name != "twinflow", i.name)):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def names() -> tuple[str, ...]:
    _load()
    return tuple(_METHODS)


def get(name: str) -> Method:
    _load()
    if name not in _METHODS:
        raise ConfigError(f"unknown objective preset {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def build_config(name: str, **overrides):
    return get(name).config(**overrides)


def build_objective(cfg):
    """The objective for a config built by `build_config` (or any instance of a registered config class)."""
    _load()
    for method in _METHODS.values():
        if type(cfg) is method.config_cls:
            return method.objective_cls(cfg)
    raise ConfigError(f"no registered objective takes a {type(cfg).__name__}")

"""Registry of networks. Every net computes the velocity F(x, t, r, cond) with signed t.

t > 0 is the real branch, t < 0 the twin (fake) branch, r the target time; see twinflow_core/objective.py.
Register a constructor with `@register_net("name")`; build it with `build_net("name", **kwargs)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from twinflow_core.errors import ConfigError

NETS: dict[str, Callable] = {}

# Modules that register nets; imported on first lookup so `import twinflow_core.nets` stays cheap.
_NET_MODULES = ("twinflow_core.nets.mlp2d", "twinflow_core.nets.unet")


def register_net(name: str):
    def wrap(constructor):
        if name in NETS and NETS[name] is not constructor:
            raise ValueError(f"net {name!r} registered twice")
        NETS[name] = constructor
        return constructor

    return wrap


def _load_all() -> None:
    for module in _NET_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def available_nets() -> list[str]:
    _load_all()
    return sorted(NETS)


def build_net(name: str, **kwargs):
    _load_all()
    if name not in NETS:
        raise ConfigError(f"unknown net {name!r}; available: {', '.join(sorted(NETS))}")
    try:
        return NETS[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"net {name!r}: {err}") from None

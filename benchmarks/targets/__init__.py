"""Systems under test, by name. Each module imports lazily what only it needs."""

from __future__ import annotations

import importlib

from .base import RunConfig, Series, Target, TargetUnavailable

_TARGETS = {
    "inferis": "inferis:InferisTarget",
    "inprocess": "inprocess:InprocessTarget",
    "redis_floor": "redis_floor:RedisFloorTarget",
    "starlette": "starlette_endpoint:StarletteTarget",
    "mlserver": "mlserver:MLServerTarget",
    "bentoml": "bentoml:BentoMLTarget",
    "rayserve": "rayserve:RayServeTarget",
}
SYSTEMS = tuple(_TARGETS)


def make(name: str) -> Target:
    if name not in _TARGETS:
        raise ValueError(f"unknown system {name!r}; choose from {list(SYSTEMS)}")
    module, cls = _TARGETS[name].split(":")
    target: Target = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return target


__all__ = ["SYSTEMS", "RunConfig", "Series", "Target", "TargetUnavailable", "make"]

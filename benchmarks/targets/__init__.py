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
    "inferis-gateway": "gateway:GatewayTarget",
    "bentoml": "bentoml:BentoMLTarget",
    "rayserve": "rayserve:RayServeTarget",
}
SYSTEMS = tuple(_TARGETS)


def make(name: str, config: RunConfig) -> list[Target]:
    """The system in each configuration of its sweep."""
    if name not in _TARGETS:
        raise ValueError(f"unknown system {name!r}; choose from {list(SYSTEMS)}")
    module, cls_name = _TARGETS[name].split(":")
    cls = getattr(importlib.import_module(f"{__name__}.{module}"), cls_name)
    targets: list[Target] = []
    for variant in cls.variants(config):
        target = cls()
        target.variant = variant
        targets.append(target)
    return targets


__all__ = ["SYSTEMS", "RunConfig", "Series", "Target", "TargetUnavailable", "make"]

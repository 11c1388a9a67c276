"""The Redis Functions library of inferis (``inferis.lua``, shipped as package data),
and the one routine that loads it into a Redis."""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

_VERSION = re.compile(r"^local LIB_VERSION = '([^']+)'", re.MULTILINE)


@functools.cache
def library_source() -> str:
    """The Lua source of the ``inferis`` Functions library."""
    return resources.files(__name__).joinpath("inferis.lua").read_text(encoding="utf-8")


def library_version() -> str:
    match = _VERSION.search(library_source())
    assert match, "lua/inferis.lua must define LIB_VERSION"
    return match.group(1)


def ensure_library(conn: Any) -> bool:
    """Load (or replace) the library on ``conn`` (a redis-py client) unless this
    version is there already. Returns True if it loaded it."""
    import redis

    try:
        current = conn.fcall_ro("INFERIS_VERSION", 0)
    except redis.ResponseError:
        current = None
    if isinstance(current, bytes):
        current = current.decode()
    if current == library_version():
        return False
    conn.function_load(library_source(), replace=True)
    return True

"""Load the Functions library into a Redis that lacks it or has another version."""

from __future__ import annotations

import re

import redis

from inferis.lua import LIBRARY_NAME, library_source

_VERSION = re.compile(r"^local LIB_VERSION = '([^']+)'", re.MULTILINE)


def library_version() -> str:
    match = _VERSION.search(library_source())
    assert match, "lua/inferis.lua must define LIB_VERSION"
    return match.group(1)


def ensure_library(conn: redis.Redis) -> bool:
    """Load (or replace) the library unless the same version is there. True if loaded."""
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


__all__ = ["LIBRARY_NAME", "ensure_library", "library_version"]

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


def ensure_library(conn: Any, compare_code: bool = True) -> bool:
    """Load (or replace) the library on ``conn`` (a redis-py client) unless exactly
    this source is there already. Returns True if it loaded it.

    The version is asked first (a cheap call); when it matches and
    ``compare_code``, the loaded code is compared too, so a library changed
    without a new version is still replaced.
    """
    import redis

    try:
        current = conn.fcall_ro("INFERIS_VERSION", 0)
    except redis.ResponseError:
        current = None
    if isinstance(current, bytes):
        current = current.decode()
    if current == library_version() and (
        not compare_code or _loaded_code(conn) in (None, library_source())
    ):
        return False
    conn.function_load(library_source(), replace=True)
    return True


def _loaded_code(conn: Any) -> str | None:
    """The code of the loaded ``inferis`` library; None when this user may not list it."""
    import redis

    try:
        listed = conn.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "inferis", "WITHCODE")
    except redis.ResponseError:
        return None
    for library in listed or ():
        fields = library if isinstance(library, dict) else dict(
            zip(library[::2], library[1::2], strict=True)
        )
        code = fields.get(b"library_code", fields.get("library_code"))
        if code is not None:
            return code.decode() if isinstance(code, bytes) else str(code)
    return None

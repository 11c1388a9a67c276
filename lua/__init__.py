"""The Redis Functions library of inferis, shipped as package data."""

from importlib import resources

LIBRARY_NAME = "inferis"


def library_source() -> str:
    """Return the Lua source of the ``inferis`` Functions library."""
    return resources.files(__name__).joinpath("inferis.lua").read_text(encoding="utf-8")

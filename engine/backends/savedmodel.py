"""Packing a TensorFlow SavedModel directory into one blob, without importing TensorFlow.

Kept apart from the backend so the CLI (or any tool) can pack a directory on
a machine that has no TensorFlow.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def pack_saved_model(directory: str | os.PathLike[str]) -> bytes:
    """Tar a SavedModel directory deterministically: the same files give the same digest.

    Entries are sorted, with zeroed mtimes and owners and fixed modes; files
    reached through symbolic links are stored as regular files.
    """
    root = Path(directory)
    if not any((root / f).is_file() for f in SAVED_MODEL_FILES):
        raise ValueError(f"{root} is not a SavedModel directory: it has no saved_model.pb")
    entries: list[tuple[str, Path]] = []
    for current, dirnames, filenames in os.walk(root):
        base = Path(current)
        for name in dirnames:
            if (base / name).is_symlink():
                raise ValueError(f"{base / name} is a link to a directory; copy it in instead")
        entries += [(p.relative_to(root).as_posix(), p) for p in (base / n for n in dirnames)]
        entries += [(p.relative_to(root).as_posix(), p) for p in (base / n for n in filenames)]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, path in sorted(entries):
            member = tarfile.TarInfo(name)
            member.mtime = 0
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            if path.is_dir():
                member.type, member.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(member)
                continue
            member.mode = 0o644
            member.size = path.stat().st_size
            with path.open("rb") as handle:
                archive.addfile(member, handle)
    return buffer.getvalue()

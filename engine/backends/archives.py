"""Bounds on what an archive may unpack to, checked before a framework opens it,
and the one place a tar is unpacked to disk.

TorchScript, torch.export and skops files are zips, read in memory; a
TensorFlow SavedModel comes as a tar, plain or compressed (gzip, bzip2, xz),
and is unpacked to a directory. A small blob can declare (or inflate to)
gigabytes: such an archive is refused before anything is unpacked, against
the smaller of the worker's setting and a multiple of the blob's own size. A
member that could land outside the directory (an absolute path, a ``..``
component, a link that leads out, a device file) has the whole archive
refused before anything is written.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from .base import BackendOptions

# Real model archives inflate a few times over; a bomb, thousands of times.
MAX_RATIO = 200
# Below this, the ratio does not apply (tiny archives of a few compressible files).
RATIO_FLOOR_BYTES = 64 * 1024 * 1024
# The compressions a tar may come in: magic number, tarfile mode, name, reader.
_COMPRESSIONS = (
    (b"\x1f\x8b", "gz", "gzip", lambda f: gzip.GzipFile(fileobj=f)),
    (b"BZh", "bz2", "bzip2", bz2.BZ2File),
    (b"\xfd7zXZ\x00", "xz", "xz", lzma.LZMAFile),
)
# What a corrupt compressed stream raises while it is read (bz2: a bare OSError).
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
# Python before 3.11.4 has no extraction filters (nor their error).
_FILTER_ERROR = getattr(tarfile, "FilterError", ())
# Links may chain through other links; past this many hops the archive is refused.
_MAX_LINK_HOPS = 40


class ArchiveRefused(ValueError):
    """The archive would unpack to more than this worker allows, or a member of it
    could land outside the directory it is unpacked to."""


def unpack_limit(blob: bytes, options: BackendOptions) -> int:
    return min(options.max_unpacked_bytes, max(MAX_RATIO * len(blob), RATIO_FLOOR_BYTES))


def _refuse(what: str, total: int, entries: int, blob: bytes, options: BackendOptions) -> None:
    limit = unpack_limit(blob, options)
    if entries > options.max_archive_entries:
        raise ArchiveRefused(
            f"{what} holds {entries} entries, more than this worker's "
            f"{options.max_archive_entries} (--max-archive-entries); refusing it"
        )
    if total > limit:
        raise ArchiveRefused(
            f"{what} unpacks to {total} bytes from a {len(blob)}-byte blob, more than the "
            f"{limit} bytes this worker allows (the smaller of --max-unpacked-mb and "
            f"{MAX_RATIO}x the blob); refusing it"
        )


def _unsafe_name(name: str) -> bool:
    """An absolute path, a drive, or a '..' component (either slash: some unpackers
    take a backslash as one)."""
    return (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None
            or ".." in re.split(r"[/\\]", name))


def check_zip(blob: bytes, options: BackendOptions, what: str = "the zip archive") -> None:
    """Refuse a zip whose members declare more than the limits, or whose names or
    types could reach outside a directory it were unpacked to. Readers stop at
    the declared size (Python's zipfile, torch's and skops' readers alike), so the
    declaration is what bounds the memory they use."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        return  # not a zip: the framework says what it is
    _refuse(what, sum(i.file_size for i in infos), len(infos), blob, options)
    for info in infos:
        if _unsafe_name(info.filename):
            raise ArchiveRefused(
                f"{what} has a member {info.filename!r} with an absolute path or '..'; "
                "refusing it"
            )
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveRefused(
                f"{what} has a member {info.filename!r} that is a link or a device, not a "
                "file or directory; refusing it"
            )


def _tar_mode(blob: bytes) -> str:
    """The one tarfile mode to open the blob with: chosen by its magic number, so
    nothing is decompressed that the bound below did not measure."""
    for magic, mode, _, _ in _COMPRESSIONS:
        if blob.startswith(magic):
            return f"r:{mode}"
    return "r:"


def _inflated_size(blob: bytes, limit: int) -> int | None:
    """How much the compressed blob inflates to, reading it once (every member of a
    multi-member stream, as tarfile would) and stopping past ``limit``; None if
    it is not compressed or the stream is corrupt (tarfile then says so)."""
    reader = next((r for magic, _, _, r in _COMPRESSIONS if blob.startswith(magic)), None)
    if reader is None:
        return None
    total = 0
    try:
        with reader(io.BytesIO(blob)) as stream:
            while chunk := stream.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    return total
    except _STREAM_ERRORS:
        return None
    return total


def check_tar(blob: bytes, options: BackendOptions, what: str = "the tar archive") -> None:
    """Refuse a tar (plain or compressed) that holds or inflates to more than the
    limits, reading it without keeping what it inflates to."""
    limit = unpack_limit(blob, options)
    inflated = _inflated_size(blob, limit)
    if inflated is not None and inflated > limit:
        name = next(n for magic, _, n, _ in _COMPRESSIONS if blob.startswith(magic))
        _refuse(f"{what} ({name})", inflated, 0, blob, options)
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode=_tar_mode(blob)) as archive:
            total = 0
            for entries, member in enumerate(archive, start=1):
                total += max(member.size, 0)
                if entries > options.max_archive_entries or total > limit:
                    _refuse(what, total, entries, blob, options)
    except (tarfile.TarError, *_STREAM_ERRORS):
        return  # not a tar: the backend says so with its own message


def _resolve(parts: Sequence[str], links: dict[str, str], hops: int = 0) -> list[str] | None:
    """A path inside the archive resolved through the archive's own symlinks, as
    the filesystem will once they are unpacked; None if it leaves the root."""
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(part)
        target = links.get("/".join(out))
        if target is not None:
            if hops >= _MAX_LINK_HOPS or target.startswith("/"):
                return None
            resolved = _resolve([*out[:-1], *target.split("/")], links, hops + 1)
            if resolved is None:
                return None
            out = resolved
    return out


def check_tar_members(members: Sequence[tarfile.TarInfo], what: str = "the tar archive") -> None:
    """Refuse an archive any member of which could be written outside the directory
    it is unpacked to, or is not a file, a directory or a link within it."""
    links = {posixpath.normpath(m.name): m.linkname for m in members if m.issym()}
    files: set[str] = set()  # what a hard link may point to: a file before it
    # What extraction has made a directory by then. A file or link over one fails,
    # and tarfile then unpacks the link's target in its place, which can loop.
    dirs = {"."}
    for member in members:
        name = member.name
        if _unsafe_name(name):
            raise ArchiveRefused(
                f"{what} has a member {name!r} with an absolute path or '..'; refusing it"
            )
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise ArchiveRefused(
                f"{what} has a member {name!r} that is a device, fifo or other special "
                "file, not a file, directory or link; refusing it"
            )
        norm = posixpath.normpath(name)
        if not member.isdir() and norm in dirs:
            raise ArchiveRefused(
                f"{what} has a member {name!r} that would replace a directory; refusing it"
            )
        parts = norm.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if member.isdir():
            dirs.add(norm)
        where = _resolve(parts[:-1], links)  # the folder it is written in
        if where is None:
            raise ArchiveRefused(
                f"{what} has a member {name!r} that lies under a link leading outside the "
                "model directory; refusing it"
            )
        if member.issym() or member.islnk():
            # A symlink resolves from its own folder, a hard link from the archive root.
            base = where if member.issym() else []
            target = member.linkname
            if not target or target.startswith("/") or \
                    _resolve([*base, *target.split("/")], links) is None:
                raise ArchiveRefused(
                    f"{what} has a member {name!r} that links to {target!r}, outside the "
                    "model directory; refusing it"
                )
            if member.islnk() and posixpath.normpath(target) not in files:
                raise ArchiveRefused(
                    f"{what} has a hard link {name!r} to {target!r}, which is not a file "
                    "earlier in the archive; refusing it"
                )
        if member.isfile():
            files.add(norm)


def extract_tar(
    blob: bytes, target: Path, options: BackendOptions, what: str = "the tar archive"
) -> None:
    """Unpack a tar (plain or compressed) into ``target``. The whole archive is
    checked first, so a refused one writes nothing; the "data" extraction filter
    (Python 3.11.4 and later) checks every member again as it is written.
    Raises ArchiveRefused, or tarfile.TarError for a blob that is not a tar."""
    check_tar(blob, options, what)
    with tarfile.open(fileobj=io.BytesIO(blob), mode=_tar_mode(blob)) as archive:
        try:  # reads every header, so the whole stream: a corrupt one fails here
            members = archive.getmembers()
        except _STREAM_ERRORS as exc:
            raise tarfile.ReadError(f"the compressed stream is corrupt ({exc})") from None
        check_tar_members(members, what)
        try:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(target, members=members, filter="data")
            else:
                archive.extractall(target, members=members)
        except _FILTER_ERROR as exc:  # the second line of defence
            raise ArchiveRefused(f"{what}: unsafe member refused: {exc}") from None

"""Bounds on what an archive may unpack to, checked before a framework opens it.

TorchScript, torch.export and skops files are zips; a TensorFlow SavedModel
comes as a tar, plain or gzip. A small blob can declare (or inflate to)
gigabytes: such an archive is refused before anything is unpacked, against
the smaller of the worker's setting and a multiple of the blob's own size.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib

from .base import BackendOptions

# Real model archives inflate a few times over; a bomb, thousands of times.
MAX_RATIO = 200
# Below this, the ratio does not apply (tiny archives of a few compressible files).
RATIO_FLOOR_BYTES = 64 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class ArchiveRefused(ValueError):
    """The archive would unpack to more than this worker allows."""


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


def check_zip(blob: bytes, options: BackendOptions, what: str = "the zip archive") -> None:
    """Refuse a zip whose members declare more than the limits. Readers stop at the
    declared size (Python's zipfile, torch's and skops' readers alike), so the
    declaration is what bounds the memory they use."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile:
        return  # not a zip: the framework says what it is
    _refuse(what, sum(i.file_size for i in infos), len(infos), blob, options)


def check_tar(blob: bytes, options: BackendOptions, what: str = "the tar archive") -> None:
    """Refuse a tar (plain or gzip) that holds or inflates to more than the limits,
    reading it once without keeping what it inflates to."""
    limit = unpack_limit(blob, options)
    if blob[:2] == _GZIP_MAGIC:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        total, view, chunk = 0, memoryview(blob), 1 << 20
        for start in range(0, len(blob), chunk):
            data = view[start : start + chunk]
            while data:
                total += len(inflater.decompress(data, 1 << 20))
                if total > limit:
                    _refuse(f"{what} (gzip)", total, 0, blob, options)
                data = inflater.unconsumed_tail
            if inflater.eof:
                break
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as archive:
            total = 0
            for entries, member in enumerate(archive, start=1):
                total += max(member.size, 0)
                if entries > options.max_archive_entries or total > limit:
                    _refuse(what, total, entries, blob, options)
    except tarfile.TarError:
        return  # not a tar: the backend says so with its own message

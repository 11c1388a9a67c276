"""Archive bombs are refused before a framework unpacks them (no Redis needed)."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferis.engine.backends.archives import ArchiveRefused, check_tar, check_zip, unpack_limit
from inferis.engine.backends.base import BackendOptions

MiB = 1024 * 1024
SMALL = BackendOptions(max_unpacked_bytes=8 * MiB, max_archive_entries=50)


def _zip(members: dict[str, int]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, size in members.items():
            archive.writestr(name, b"\0" * size)
    return buffer.getvalue()


def _tar(members: dict[str, int], gz: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            archive.addfile(info, io.BytesIO(b"\0" * size))
    raw = buffer.getvalue()
    return gzip.compress(raw, 9) if gz else raw


def test_a_zip_inflating_far_past_the_limit_is_refused() -> None:
    bomb = _zip({"archive/data/0": 64 * MiB})  # zeros: a few tens of KiB compressed
    assert len(bomb) < MiB
    with pytest.raises(ArchiveRefused, match="unpacks to 67108864 bytes"):
        check_zip(bomb, SMALL, "the torchscript archive")
    check_zip(_zip({"archive/data/0": 4 * MiB}), SMALL)  # within: no error


def test_too_many_entries_are_refused() -> None:
    with pytest.raises(ArchiveRefused, match="51 entries"):
        check_zip(_zip({f"f{i}": 1 for i in range(51)}), SMALL)
    with pytest.raises(ArchiveRefused, match="entries"):
        check_tar(_tar({f"f{i}": 1 for i in range(51)}, gz=False), SMALL)


@pytest.mark.parametrize("gz", [True, False])
def test_a_tar_over_the_limit_is_refused_before_extracting(gz: bool) -> None:
    with pytest.raises(ArchiveRefused, match="unpacks to"):
        check_tar(_tar({"saved_model.pb": 9 * MiB}, gz), SMALL, "the SavedModel archive")
    check_tar(_tar({"saved_model.pb": 2 * MiB}, gz), SMALL)


def test_the_limit_is_the_smaller_of_the_setting_and_a_ratio_of_the_blob() -> None:
    generous = BackendOptions(max_unpacked_bytes=10**12)
    assert unpack_limit(b"x" * MiB, generous) == 200 * MiB  # ratio bound
    assert unpack_limit(b"x", generous) == 64 * MiB  # the floor for tiny blobs
    assert unpack_limit(b"x" * MiB, SMALL) == 8 * MiB  # the worker's setting


def test_what_is_not_an_archive_is_left_to_the_backend() -> None:
    check_zip(b"not a zip", SMALL)
    check_tar(b"not a tar", SMALL)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * MiB), min_size=1, max_size=6))
def test_zip_refusal_follows_the_declared_total(sizes: list[int]) -> None:
    blob = _zip({f"m{i}": size for i, size in enumerate(sizes)})
    if sum(sizes) > unpack_limit(blob, SMALL):
        with pytest.raises(ArchiveRefused):
            check_zip(blob, SMALL)
    else:
        check_zip(blob, SMALL)

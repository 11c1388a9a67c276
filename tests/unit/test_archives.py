"""Archive bombs and members that would land outside are refused before a framework
unpacks them, with nothing written (no Redis needed)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferis.engine.backends.archives import (
    ArchiveRefused,
    check_tar,
    check_zip,
    extract_tar,
    unpack_limit,
)
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


# --- compressed bombs: every compression a tar may come in is measured -------


def _compressed(raw: bytes, kind: str) -> bytes:
    return {"gz": lambda b: gzip.compress(b, 6), "bz2": lambda b: bz2.compress(b, 1),
            "xz": lambda b: lzma.compress(b, preset=1)}[kind](raw)


@pytest.mark.parametrize("kind, name", [("gz", "gzip"), ("bz2", "bzip2"), ("xz", "xz")])
def test_a_header_that_inflates_past_the_limit_is_refused_in_every_compression(
    kind: str, name: str
) -> None:
    # Declared member sizes are tiny; a pax header of 12 MiB is read into memory whole.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("saved_model.pb")
        info.pax_headers = {"comment": "a" * (12 * MiB)}
        archive.addfile(info, io.BytesIO(b""))
    bomb = _compressed(buffer.getvalue(), kind)
    assert len(bomb) < MiB
    with pytest.raises(ArchiveRefused, match=rf"the SavedModel archive \({name}\) unpacks to"):
        check_tar(bomb, SMALL, "the SavedModel archive")


def test_a_gzip_bomb_in_a_second_member_is_measured_too() -> None:
    # tarfile reads every member of a multi-member gzip; so must the bound.
    bomb = gzip.compress(_tar({"saved_model.pb": 1}, gz=False)) + gzip.compress(b"\0" * 12 * MiB)
    with pytest.raises(ArchiveRefused, match=r"\(gzip\) unpacks to \d+ bytes"):
        check_tar(bomb, SMALL)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_many_entries_are_refused_compressed_too(kind: str) -> None:
    with pytest.raises(ArchiveRefused, match="51 entries"):
        check_tar(_compressed(_tar({f"f{i}": 1 for i in range(51)}, gz=False), kind), SMALL)


def test_a_corrupt_compressed_stream_is_not_an_archive(tmp_path: Path) -> None:
    corrupt = b"\x1f\x8b\x08\x00" + b"\xff" * 200  # gzip magic, then nothing valid
    check_tar(corrupt, SMALL)  # left to the backend, which says what it is not
    with pytest.raises(tarfile.TarError):
        extract_tar(corrupt, tmp_path, SMALL)
    truncated = gzip.compress(_tar({"saved_model.pb": 4096}, gz=False))[:-600]
    with pytest.raises(tarfile.TarError):
        extract_tar(truncated, tmp_path, SMALL)


# --- members that would land outside the directory ----------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x"
            ) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    return info, data if kind == tarfile.REGTYPE else b""


def _tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """The extraction directory, inside a directory that must stay as it is."""
    folder = tmp_path / "inside" / "model"
    folder.mkdir(parents=True)
    return folder


def _untouched(target: Path) -> None:
    """Nothing was written, in the directory or anywhere around it."""
    around = target.parent.parent
    assert sorted(p.relative_to(around).as_posix() for p in around.rglob("*")) == [
        "inside", "inside/model"]


ESCAPED = Path(tempfile.gettempdir()) / "inferis-escaped"  # where an absolute member aims
UNSAFE = {
    "dotdot": ([_member("../escaped")], r"'\.\./escaped' with an absolute path or '\.\.'"),
    "deep dotdot": ([_member("a/../../escaped")], r"absolute path or '\.\.'"),
    "absolute": ([_member(ESCAPED.as_posix())], r"absolute path or '\.\.'"),
    "drive": ([_member("C:/escaped")], r"absolute path or '\.\.'"),
    "symlink out": ([_member("variables", tarfile.SYMTYPE, "../../etc")],
                    r"'variables' that links to '\.\./\.\./etc', outside the model directory"),
    "absolute symlink": ([_member("variables", tarfile.SYMTYPE, "/etc")], "links to '/etc'"),
    "hardlink out": ([_member("saved_model.pb", tarfile.LNKTYPE, "../escaped")],
                     r"links to '\.\./escaped'"),
    "absolute hardlink": ([_member("saved_model.pb", tarfile.LNKTYPE, "/etc/passwd")],
                          "links to '/etc/passwd'"),
    # Each link alone stays inside; through the first, the second leads out. Read
    # name by name this passes, and the first link was written before the second
    # was found out.
    "chained symlinks": ([_member("a", tarfile.SYMTYPE, "."),
                          _member("a/b", tarfile.SYMTYPE, "..")], r"'a/b' that links to '\.\.'"),
    "link under a link": ([_member("x/y/l", tarfile.SYMTYPE, "../.."),
                           _member("m", tarfile.SYMTYPE, "x/y/l/..")], "'m' that links to"),
    "file under a link out": ([_member("up", tarfile.SYMTYPE, "x/../.."),
                               _member("up/escaped")], "links to"),
    # A link over a directory cannot be made; tarfile then unpacks what it points to
    # in its place, which for a link to itself recursed until Python gave up.
    "link over the root": ([_member("./.", tarfile.SYMTYPE, ".")], "would replace a directory"),
    "link over a folder": ([_member("assets/vocab.txt"), _member("assets", tarfile.LNKTYPE,
                                                                  "saved_model.pb")],
                           "'assets' that would replace a directory"),
    "hardlink to nothing": ([_member("copy", tarfile.LNKTYPE, "copy")], "not a file earlier"),
    "character device": ([_member("tty", tarfile.CHRTYPE)], "device, fifo or other special"),
    "block device": ([_member("sda", tarfile.BLKTYPE)], "device, fifo or other special"),
    "fifo": ([_member("pipe", tarfile.FIFOTYPE)], "device, fifo or other special"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_members_refuse_the_whole_archive_before_anything_is_written(
    case: str, target: Path
) -> None:
    members, message = UNSAFE[case]
    blob = _tar_of([_member("saved_model.pb"), *members])  # a good member first
    for compressed in (blob, gzip.compress(blob)):
        with pytest.raises(ArchiveRefused, match=message):
            extract_tar(compressed, target, SMALL, "the SavedModel archive")
        _untouched(target)
    assert not ESCAPED.exists()


def test_links_that_stay_inside_are_unpacked(target: Path) -> None:
    blob = _tar_of([
        _member("assets", tarfile.DIRTYPE), _member("assets/vocab.txt", data=b"words"),
        _member("variables", tarfile.DIRTYPE),
        _member("variables/vocab", tarfile.SYMTYPE, "../assets/vocab.txt"),
        _member("copy.txt", tarfile.LNKTYPE, "assets/vocab.txt"),
        _member("here", tarfile.SYMTYPE, "assets"), _member("here/more.txt", data=b"more"),
        _member("saved_model.pb", data=b"pb"),
    ])
    extract_tar(blob, target, SMALL)
    assert (target / "variables" / "vocab").read_bytes() == b"words"
    assert (target / "copy.txt").read_bytes() == b"words"
    assert (target / "assets" / "more.txt").read_bytes() == b"more"


def test_a_zip_with_members_that_reach_outside_is_refused() -> None:
    for name in ("../escaped", "/abs/escaped", "a/../../escaped", "..\\..\\escaped", "C:/x"):
        with pytest.raises(ArchiveRefused, match=r"absolute path or '\.\.'"):
            check_zip(_zip({"archive/data.pkl": 1, name: 1}), SMALL, "the torchscript archive")
    for kind in (stat.S_IFLNK, stat.S_IFCHR, stat.S_IFIFO):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            info = zipfile.ZipInfo("archive/data/0")
            info.create_system, info.external_attr = 3, (kind | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
        with pytest.raises(ArchiveRefused, match="a link or a device"):
            check_zip(buffer.getvalue(), SMALL, "the skops file")
    check_zip(_zip({"archive/data.pkl": 1, "archive/.data/version": 1}), SMALL)


NAME_PART = st.sampled_from(["a", "b", "..", ".", "", "saved_model.pb"])
RANDOM_MEMBER = st.tuples(
    st.lists(NAME_PART, min_size=1, max_size=4).map("/".join),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
    st.one_of(st.lists(NAME_PART, min_size=1, max_size=4).map("/".join),
              st.sampled_from(["/", "/etc", "/tmp"])),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=st.lists(RANDOM_MEMBER, min_size=1, max_size=6))
def test_random_archives_unpack_inside_or_are_refused(members: list, tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    target = root / "inside" / "model"
    target.mkdir(parents=True)
    blob = _tar_of([_member(name, kind, link) for name, kind, link in members])
    try:
        extract_tar(blob, target, SMALL)
    except ArchiveRefused:
        _untouched(target)
        return
    except (tarfile.TarError, OSError):
        pass  # the archive itself does not hold together (a link to nothing, say)
    # whatever was written is inside, and every link in it resolves inside
    assert sorted(p.name for p in root.iterdir()) == ["inside"]
    assert sorted(p.name for p in (root / "inside").iterdir()) == ["model"]
    inside = os.path.realpath(target)
    for folder, dirs, files in os.walk(target):  # links are not followed (they may loop)
        for name in dirs + files:
            real = os.path.realpath(os.path.join(folder, name))
            assert real == inside or real.startswith(inside + os.sep), (name, real)

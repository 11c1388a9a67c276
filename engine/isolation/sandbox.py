"""Confine the backend process: no files beyond its own, no network.

A TorchScript or TensorFlow model is a program: its graph may hold ops that
read and write files (``torch.from_file``, ``tf.io.read_file``) or open
sockets. The backend child confines itself before it loads anything, with two
kernel mechanisms an unprivileged process may apply to itself:

- **Landlock** (Linux 5.13+): file access only beneath the Python installation
  and the system libraries (read and execute), the process's own ``/proc``
  entry, a few CPU and memory files the frameworks read, ``/dev/null`` and the
  random devices, and a private scratch directory (read and write) where
  archives are unpacked. TCP bind and connect are refused (ABI 4+), and so are
  abstract Unix sockets and signals to processes outside (ABI 6+).
- **seccomp**: ``socket()`` for anything but ``AF_UNIX`` fails with EPERM (UDP,
  raw, netlink), and so does ``io_uring_setup``, which could open sockets
  without the ``socket`` system call.

Both last for the life of the process and its children, and cannot be undone
from inside. See docs/SECURITY.md for what remains possible.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# Landlock filesystem rights, by the ABI that introduced them.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV

_READ = _EXECUTE | _READ_FILE | _READ_DIR
# The frameworks size their thread pools from these; nothing secret in them.
_SYSTEM_READ = (
    "/usr", "/lib", "/lib64", "/lib32",
    "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys/kernel",
    "/sys/devices/system/cpu", "/sys/fs/cgroup",
    "/dev/urandom", "/dev/random",
    "/sys/bus/pci/devices", "/proc/driver/nvidia",  # device discovery (ONNX Runtime, CUDA)
)
# GPUs are driven through device files (read, write and ioctl); absent on CPU hosts.
_GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/dri")

# seccomp: architecture tag, and the numbers of socket and io_uring_setup.
_ARCHES = {
    "x86_64": (0xC000003E, 41, 425),
    "aarch64": (0xC00000B7, 198, 425),
}
_X32_SYSCALL_BIT = 0x40000000
_AF_UNIX = 1
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000


class SandboxUnavailable(OSError):
    """This kernel (or its configuration) cannot confine a process this way."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers; 0 when it has none (or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(int(version), 0)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise SandboxUnavailable(code, f"{what}: {os.strerror(code)}")
    return result


def _ruleset(abi: int) -> int:
    """A Landlock ruleset handling every right this ABI knows (all denied unless allowed)."""
    fs = _FS_ABI1
    if abi >= 2:
        fs |= _REFER
    if abi >= 3:
        fs |= _TRUNCATE
    if abi >= 5:
        fs |= _IOCTL_DEV
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    return _check(
        libc.syscall(
            ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), buffer, ctypes.c_size_t(len(attr)),
            ctypes.c_uint32(0),
        ),
        "landlock_create_ruleset",
    )


def _allow(ruleset: int, path: str, rights: int, handled: int) -> None:
    """Allow ``rights`` beneath ``path``; a path that does not exist is skipped."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS  # a file takes only the rights that apply to files
        rights &= handled
        attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        _check(
            libc.syscall(
                ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), attr, ctypes.c_uint32(0),
            ),
            f"landlock_add_rule {path}",
        )
    finally:
        os.close(fd)


def python_paths() -> list[str]:
    """Where this interpreter reads its code from: its prefixes and PYTHONPATH, the
    import paths inside them, and the directories of inferis's own packages (an
    editable install keeps them in a source tree). Not every import path: ``python
    -m`` puts the working directory there, which may hold the deployment's secrets."""
    import inferis.client
    import inferis.engine
    import inferis.lua

    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    # PYTHONPATH names code folders on purpose (the working directory gets in by accident)
    prefixes.update(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                    if p and os.path.isabs(p))
    paths = set(prefixes)
    paths.update(
        p for p in sys.path
        if p and os.path.isabs(p) and any(_within(p, prefix) for prefix in prefixes)
    )
    for package in (inferis, inferis.client, inferis.engine, inferis.lua):
        paths.update(package.__path__)
    return sorted(paths)


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == (
        os.path.realpath(folder)
    )


def _restrict_files_and_network(abi: int, scratch: Path, readable: Iterable[str]) -> None:
    ruleset = _ruleset(abi)
    try:
        handled = _FS_ABI1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
        handled |= _IOCTL_DEV if abi >= 5 else 0
        for path in (*_SYSTEM_READ, *readable):
            _allow(ruleset, path, _READ, handled)
        _allow(ruleset, f"/proc/{os.getpid()}", _READ, handled)
        _allow(ruleset, "/dev/null", _READ_FILE | _WRITE_FILE, handled)
        gpus = [str(p) for p in Path("/dev").glob("nvidia[0-9]*")]
        for device in (*_GPU_DEVICES, *gpus):
            _allow(ruleset, device, _READ | _WRITE_FILE | _IOCTL_DEV, handled)
        _allow(ruleset, str(scratch), handled, handled)
        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        _check(
            libc.syscall(
                ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset),
                ctypes.c_uint32(0),
            ),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)


def _seccomp_program(arch: int, nr_socket: int, nr_io_uring_setup: int) -> bytes:
    """A classic BPF filter: only AF_UNIX sockets, no io_uring, everything else allowed."""
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    deny = _RET_ERRNO | errno.EPERM

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    program = [
        op(ld_abs, 4),  # seccomp_data.arch
        # Jump offsets count from the next instruction: "deny" is the last one.
        op(jeq, arch, 0, 7),  # another ABI (i386 on x86_64): denied
        op(ld_abs, 0),  # seccomp_data.nr
        op(jge, _X32_SYSCALL_BIT, 5, 0),  # x32 system calls: denied
        op(jeq, nr_io_uring_setup, 4, 0),
        op(jeq, nr_socket, 0, 2),
        op(ld_abs, 16),  # low half of args[0], the address family
        op(jeq, _AF_UNIX, 0, 1),
        op(ret, _RET_ALLOW),
        op(ret, deny),
    ]
    return b"".join(program)


def _restrict_sockets() -> None:
    tags = _ARCHES.get(platform.machine())
    if tags is None:
        return  # Landlock still refuses TCP; other families stay open on this architecture
    program = _seccomp_program(*tags)
    filters = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }, native layout
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(filters))
    prog = ctypes.create_string_buffer(fprog, len(fprog))
    libc = _libc()
    _check(
        libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, prog, 0, 0), "seccomp filter"
    )


def confine(scratch: Path, readable: Iterable[str] = ()) -> int:
    """Confine this process for good; return the Landlock ABI used.

    ``scratch`` is the one directory left writable. Raises SandboxUnavailable
    (changing nothing) when the kernel has no Landlock.
    """
    abi = landlock_abi()
    if abi < 1:
        raise SandboxUnavailable(errno.ENOSYS, "this kernel offers no Landlock")
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _restrict_files_and_network(abi, scratch, (*python_paths(), *readable))
    _restrict_sockets()
    return abi

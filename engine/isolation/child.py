"""The backend process: loads models and runs them for its worker, nothing else.

Started with ``spawn`` by :class:`~.runner.IsolatedRunner`; it dies with its
worker (``PR_SET_PDEATHSIG``) even while stuck in a native call. Given a
scratch directory, it confines itself there (:mod:`.sandbox`) before it
imports a framework or reads a model.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from inferis.client.protocol.errors import InferisError

from ..backends.base import BackendOptions, LoadedModel
from .framing import recv, send
from .sandbox import SandboxUnavailable, confine

# The exit status of a child that was asked to confine itself and could not.
EXIT_UNCONFINED = 3


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGKILLed when the worker dies, even while stuck in a native call."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent_pid:  # the parent was gone before prctl took effect
        os._exit(1)


def _confine(scratch: str) -> None:
    """Confine this process to ``scratch``; exit rather than run models unconfined."""
    # Frameworks read and write settings under HOME (~/.keras): a private one, here.
    for variable in ("TMPDIR", "HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        os.environ[variable] = scratch
    tempfile.tempdir = scratch  # where backends unpack archives (SavedModel directories)
    try:
        abi = confine(Path(scratch))
    except SandboxUnavailable as exc:
        logging.getLogger(__name__).error("cannot confine the backend process: %s", exc)
        os._exit(EXIT_UNCONFINED)
    logging.getLogger(__name__).debug("backend process confined (Landlock ABI %d)", abi)


def _error_reply(exc: BaseException) -> tuple[str, str | None, str, str]:
    if isinstance(exc, InferisError):
        return ("error", exc.code, type(exc).__name__, exc.message)
    return ("error", None, type(exc).__name__, str(exc))


def child_main(
    sock: socket.socket,
    options: BackendOptions,
    parent_pid: int,
    log_level: int,
    log_format: str | None,
    scratch: str | None = None,
) -> None:
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the worker decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=log_format)
    if scratch is not None:
        _confine(scratch)
    from ..backends.registry import load_model

    models: dict[int, LoadedModel] = {}
    while True:
        try:
            message = recv(sock)
        except (EOFError, OSError):
            break  # the parent closed the socket (or died)
        op = message[0]
        if op == "close":
            break
        reply: Any
        try:
            if op == "load":
                _, ident, info, blob = message
                blob = bytes(blob)  # a large blob arrives as a bytearray (out of band)
                model = load_model(blob, info, options)
                models[ident] = model
                reply = ("ok", (list(model.inputs), list(model.outputs), model.device))
            elif op == "run":
                _, ident, feed = message
                reply = ("ok", models[ident].run(feed))
            elif op == "unload":
                model = models.pop(message[1], None)
                if model is not None:
                    model.close()
                reply = ("ok", None)
            else:
                reply = ("error", None, "ValueError", f"unknown request {op!r}")
        except Exception as exc:
            reply = _error_reply(exc)
        try:
            send(sock, reply)
        except OSError:  # the parent is gone
            break
        except Exception as exc:  # e.g. an output that cannot be pickled
            send(sock, _error_reply(exc))
    for model in models.values():
        with contextlib.suppress(Exception):
            model.close()

"""Backends in a supervised child process, so a run that never returns can be cut off.

A hung native op, an endless TorchScript loop or a deadlock inside a framework
cannot be interrupted from Python in the same process. :class:`IsolatedRunner`
loads models in one child process (``spawn``: the worker has threads and
sockets a fork would copy) and waits for each run with a timeout. When a run
times out the child is killed; a fresh child starts at the next call and loads
again, from the blobs kept here, whatever that call needs. A child that dies by
itself (a segfault, the OOM killer) is replaced the same way.

Messages are pickles (protocol 5) on a socket pair; array buffers of 64 KiB or
more travel out of band, straight from the array and into the buffer the
received array keeps. Isolation protects the worker from hangs and crashes.
With ``sandbox=True`` the child also confines itself (:mod:`.sandbox`) before
loading anything: no files beyond a private scratch directory, which this side
creates and removes, and no network. Its replies are trusted either way.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import pickle
import select
import shutil
import socket
import tempfile
import threading
import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from inferis.client.protocol.errors import BackendError, error_from_code
from inferis.client.protocol.models import ModelInfo, TensorSpec

from ..backends.base import BackendOptions, RunTimeout
from .child import child_main
from .framing import recv, send

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_LOAD_TIMEOUT_S = 300.0
# Closing a model or stopping the child should be quick; past this it is killed.
_SHORT_TIMEOUT_S = 10.0
_MAX_POLL_MS = 2**31 - 1
# Larger socket buffers than the default (~200 KiB) make moving megabytes
# cheaper: fewer wake-ups of the reader per message. The kernel caps them.
_SOCKET_BUFFER_BYTES = 4 << 20

Specs = tuple[list[TensorSpec], list[TensorSpec], str]


class _ChildGone(Exception):
    """The child closed its socket or exited: what it held is lost."""


class _Expired(Exception):
    """No reply within the timeout; the child was killed."""


@dataclass
class _Known:
    ident: int
    blob: bytes
    info: ModelInfo


def _label(info: ModelInfo) -> str:
    return f"model {info.name} v{info.version}"


def _root_log_format() -> str | None:
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:
            return handler.formatter._fmt
    return None


class IsolatedRunner:
    """One child process that loads and runs models; runs are cut off after a timeout.

    Calls are serialized (one in flight at a time). The child is started
    lazily by the first call that needs it. On Linux it is SIGKILLed when the
    thread that started it exits, so that a worker killed while a run hangs
    leaves no orphan: make the calls from a thread that lives as long as the
    runner (the worker's main thread).
    """

    def __init__(
        self,
        options: BackendOptions,
        default_timeout_ms: int = DEFAULT_TIMEOUT_MS,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        sandbox: bool = False,
    ) -> None:
        if default_timeout_ms <= 0 or load_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.options = options
        self.default_timeout_ms = default_timeout_ms
        self.load_timeout_s = load_timeout_s
        self.sandbox = sandbox
        self._scratch: str | None = None  # the sandboxed child's only writable directory
        self._context = get_context("spawn")
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._sock: socket.socket | None = None
        # Watches the pipe and the child's exit; kept across calls (cheaper than select).
        self._poller: Any = None
        self._known: dict[Hashable, _Known] = {}
        # Keys of models dropped by their owners (from finalizers: no lock taken
        # there); forgotten at the next call that holds the lock.
        self._released: collections.deque[Hashable] = collections.deque()
        self._in_child: set[int] = set()
        self._next_ident = 0
        self.starts = 0  # child processes started
        self.timeouts = 0  # runs abandoned for exceeding their timeout
        self.crashes = 0  # children that died by themselves during a call

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when no child is running."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ public calls

    def load(self, key: Hashable, blob: bytes, info: ModelInfo) -> Specs:
        """Load a model under ``key`` (replacing what it held); return its input/output specs.

        Errors keep their inferis type; any other exception becomes a
        BackendError "cannot load model ...", as an in-process load does.
        """
        with self._lock:
            self._forget_released()
            self._forget(key)
            self._next_ident += 1
            known = _Known(self._next_ident, blob, info)
            specs = self._load_in_child(known)
            self._known[key] = known
            return specs

    def run(
        self, key: Hashable, feed: dict[str, np.ndarray], timeout_s: float
    ) -> dict[str, np.ndarray]:
        """Run ``feed`` on the model loaded under ``key``; raise RunTimeout past ``timeout_s``.

        The model is loaded again first if the child was replaced since.
        """
        with self._lock:
            self._forget_released()
            known = self._known.get(key)
            if known is None:
                raise BackendError(f"no model is loaded under {key!r}")
            if known.ident not in self._in_child or not self._child_alive():
                self._load_in_child(known)
            what = f"running {_label(known.info)}"
            try:
                reply = self._request(("run", known.ident, feed), timeout_s, what)
            except _Expired:
                self.timeouts += 1
                timeout_ms = round(timeout_s * 1000)
                raise RunTimeout(
                    f"{_label(known.info)} exceeded its execution timeout of {timeout_ms} ms "
                    "and was abandoned; the backend process running it was killed",
                    timeout_ms,
                ) from None
            return self._result(reply, f"{_label(known.info)} failed")

    def release(self, key: Hashable) -> None:
        """Forget ``key`` at the next call; safe from a finalizer (takes no lock)."""
        self._released.append(key)

    def _forget_released(self) -> None:
        while self._released:
            self._forget(self._released.popleft())

    def unload(self, key: Hashable) -> None:
        """Forget ``key`` and release its model in the child."""
        with self._lock:
            self._forget(key)

    def close(self) -> None:
        """Stop the child and forget every model."""
        with self._lock:
            self._known.clear()
            if self._process is None or self._sock is None:
                return
            with contextlib.suppress(OSError):
                send(self._sock, ("close",))
            self._process.join(_SHORT_TIMEOUT_S)
            self._discard_child()

    # --------------------------------------------------------------- internals

    def _child_alive(self) -> bool:
        if self._process is None:
            return False
        if self._process.is_alive():
            return True
        # Died between calls (OOM killer, an external kill): replaced transparently.
        log.warning(
            "backend process %s exited (%s) while idle; a new one will start",
            self._process.pid, _exit_status(self._process.exitcode),
        )
        self._discard_child()
        return False

    def _start_child(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        for end in (parent_sock, child_sock):
            with contextlib.suppress(OSError):  # the kernel may refuse; defaults still work
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER_BYTES)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER_BYTES)
        if self.sandbox:
            self._scratch = tempfile.mkdtemp(prefix="inferis-sandbox-")
        process = self._context.Process(
            target=child_main,
            args=(
                # Envelope keys stay here: models are decrypted before they are sent.
                child_sock, dataclasses.replace(self.options, model_keys={}), os.getpid(),
                logging.getLogger().getEffectiveLevel(), _root_log_format(), self._scratch,
            ),
            name="inferis-backend",
            daemon=True,
        )
        process.start()
        child_sock.close()  # only the child holds its end: its death reads as EOF here
        self._poller = select.poll()
        self._poller.register(parent_sock.fileno(), select.POLLIN)
        self._poller.register(process.sentinel, select.POLLIN)
        self._process, self._sock = process, parent_sock
        self.starts += 1
        log.info("started backend process %s", process.pid)

    def _discard_child(self) -> None:
        """Kill the child (if still running) and forget everything loaded there."""
        process, sock = self._process, self._sock
        self._process = self._sock = self._poller = None
        self._in_child.clear()
        if process is not None:
            if process.exitcode is None:
                process.kill()
            process.join(_SHORT_TIMEOUT_S)
            with contextlib.suppress(ValueError):
                process.close()
        if sock is not None:
            sock.close()
        if self._scratch is not None:  # what a killed child unpacked there
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _load_in_child(self, known: _Known) -> Specs:
        if not self._child_alive():
            self._start_child()
        what = f"loading {_label(known.info)}"
        try:
            # PickleBuffer: a large blob goes out of band, not copied into the pickle.
            message = ("load", known.ident, known.info, pickle.PickleBuffer(known.blob))
            reply = self._request(message, self.load_timeout_s, what)
        except _Expired:
            raise BackendError(
                f"cannot load {_label(known.info)}: loading took longer than "
                f"{self.load_timeout_s:g} s and was abandoned"
            ) from None
        info = known.info
        specs = self._result(
            reply, f"cannot load {_label(info)} with backend {info.backend}"
        )
        self._in_child.add(known.ident)
        return specs

    def _forget(self, key: Hashable) -> None:
        known = self._known.pop(key, None)
        if known is None or known.ident not in self._in_child:
            return
        self._in_child.discard(known.ident)
        if not self._child_alive():
            return
        try:
            self._request(("unload", known.ident), _SHORT_TIMEOUT_S, "releasing a model")
        except _Expired:
            log.warning("backend process did not release a model in time; killed it")
        except BackendError as exc:
            log.warning("%s", exc.message)

    def _request(self, message: Any, timeout_s: float, what: str) -> Any:
        """Send one request and wait for its reply; _Expired once the child is killed.

        Anything but a reply (timeout, death, an interrupt) kills the child, so a
        late reply can never be read as the answer to a later request.
        """
        assert self._process is not None and self._sock is not None
        process, sock, pid = self._process, self._sock, self._process.pid
        try:
            try:
                send(sock, message)
                wait_ms = min(max(0, math.ceil(timeout_s * 1000)), _MAX_POLL_MS)
                ready = {fd for fd, _ in self._poller.poll(wait_ms)}
                if not ready:
                    raise _Expired
                if sock.fileno() not in ready:
                    raise _ChildGone
                return recv(sock)
            except (EOFError, OSError) as exc:
                raise _ChildGone from exc
        except _ChildGone:
            process.join(_SHORT_TIMEOUT_S)
            status = _exit_status(process.exitcode)
            self.crashes += 1
            self._discard_child()
            log.error("backend process %s died (%s) while %s", pid, status, what)
            raise BackendError(f"the backend process died ({status}) while {what}") from None
        except _Expired:
            log.error(
                "%s took longer than %g s; killing backend process %s",
                what, timeout_s, pid,
            )
            self._discard_child()
            raise
        except BaseException:
            self._discard_child()
            raise

    @staticmethod
    def _result(reply: Any, context: str) -> Any:
        if reply[0] == "ok":
            return reply[1]
        _, code, type_name, message = reply
        if code is not None:
            raise error_from_code(code, message)
        raise BackendError(f"{context}: {type_name}: {message}")


def _exit_status(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def execution_timeout_ms(info: ModelInfo, default_ms: int) -> int:
    """A version's execution timeout: META ``timeout_ms`` if set, else ``default_ms``."""
    value = info.extra.get("timeout_ms")
    if value is None:
        return default_ms
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BackendError(
            f"cannot load {_label(info)}: META timeout_ms must be a positive number of "
            f"milliseconds, got {value!r}"
        )
    return max(1, round(value))


_INSTANCES = itertools.count(1)


class IsolatedModel:
    """A :class:`LoadedModel` whose runs happen in an :class:`IsolatedRunner`'s child."""

    def __init__(
        self, runner: IsolatedRunner, key: Hashable, blob: bytes, info: ModelInfo
    ) -> None:
        self.timeout_ms = execution_timeout_ms(info, runner.default_timeout_ms)
        self._runner = runner
        # Unique per instance: a model reloaded under the same cache key must not be
        # forgotten when its evicted predecessor is collected.
        self._key = (key, next(_INSTANCES))
        self.inputs, self.outputs, self.device = runner.load(self._key, blob, info)
        self._finalizer = weakref.finalize(self, runner.release, self._key)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(self._key, feed, self.timeout_ms / 1000)

    def close(self) -> None:
        self._finalizer.detach()
        self._runner.unload(self._key)

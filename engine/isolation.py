"""Backends in a supervised child process, so a run that never returns can be cut off.

A hung native op, an endless TorchScript loop or a deadlock inside a framework
cannot be interrupted from Python in the same process. :class:`IsolatedRunner`
loads models in one child process (``spawn``: the worker has threads and
sockets a fork would copy) and waits for each run with a timeout. When a run
times out the child is killed; a fresh child starts at the next call and loads
again, from the blobs kept here, whatever that call needs. A child that dies by
itself (a segfault, the OOM killer) is replaced the same way.

Messages are pickles (protocol 5); large array buffers travel out of band, as
their own pipe messages, so they are not copied into the pickle. Isolation
protects the worker from hangs and crashes; it is not a sandbox: the child runs
as the same user, and its replies are trusted.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import struct
import sys
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from multiprocessing import connection, get_context
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from inferis.client.core import ModelInfo
from inferis.client.errors import BackendError, InferisError, error_from_code

from .backends.base import BackendOptions, LoadedModel, TensorSpec

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_LOAD_TIMEOUT_S = 300.0
# Closing a model or stopping the child should be quick; past this it is killed.
_SHORT_TIMEOUT_S = 10.0
# Buffers at least this large are sent as their own message instead of being
# copied into the pickle; below it one message per call is cheaper.
_OUT_OF_BAND_MIN_BYTES = 64 * 1024
_COUNT = struct.Struct("<I")

Specs = tuple[list[TensorSpec], list[TensorSpec]]


class RunTimeout(BackendError):
    """A run exceeded its execution timeout; the process running it was killed."""

    def __init__(self, message: str, timeout_ms: int) -> None:
        super().__init__(message)
        self.timeout_ms = timeout_ms

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.timeout_ms))


class _ChildGone(Exception):
    """The child closed its pipe or exited: what it held is lost."""


class _Expired(Exception):
    """No reply within the timeout; the child was killed."""


# --------------------------------------------------------------------- framing


def _send(conn: connection.Connection, message: Any) -> None:
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < _OUT_OF_BAND_MIN_BYTES:
            return True  # serialized in-band
        buffers.append(raw)
        return False

    payload = pickle.dumps(message, protocol=5, buffer_callback=out_of_band)
    sizes = [b.nbytes for b in buffers]
    conn.send_bytes(_COUNT.pack(len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes) + payload)
    for raw in buffers:
        conn.send_bytes(raw)


def _recv(conn: connection.Connection) -> Any:
    frame = conn.recv_bytes()
    (count,) = _COUNT.unpack_from(frame)
    sizes = struct.unpack_from(f"<{count}Q", frame, _COUNT.size)
    # bytearrays keep received arrays writable, as a backend's own results are.
    buffers = [bytearray(size) for size in sizes]
    for buffer in buffers:
        conn.recv_bytes_into(buffer)
    return pickle.loads(memoryview(frame)[_COUNT.size + 8 * count :], buffers=buffers)


# ----------------------------------------------------------------- child side


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGKILLed when the worker dies, even while stuck in a native call."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if os.getppid() != parent_pid:  # the parent was gone before prctl took effect
        os._exit(1)


def _error_reply(exc: BaseException) -> tuple[str, str | None, str, str]:
    if isinstance(exc, InferisError):
        return ("error", exc.code, type(exc).__name__, exc.message)
    return ("error", None, type(exc).__name__, str(exc))


def _child_main(
    conn: connection.Connection,
    options: BackendOptions,
    parent_pid: int,
    log_level: int,
    log_format: str | None,
) -> None:
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the worker decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=log_format)
    from .backends.registry import get_backend

    models: dict[int, LoadedModel] = {}
    while True:
        try:
            message = _recv(conn)
        except (EOFError, OSError):
            break  # the parent closed the pipe (or died)
        op = message[0]
        if op == "close":
            break
        reply: Any
        try:
            if op == "load":
                _, ident, info = message
                blob = conn.recv_bytes()  # the blob follows as its own message
                model = get_backend(info.backend).load(blob, info, options)
                models[ident] = model
                reply = ("ok", (list(model.inputs), list(model.outputs)))
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
            _send(conn, reply)
        except (BrokenPipeError, EOFError):
            break
        except Exception as exc:  # e.g. an output that cannot be pickled
            _send(conn, _error_reply(exc))
    for model in models.values():
        with contextlib.suppress(Exception):
            model.close()


# ---------------------------------------------------------------- parent side


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
    lazily by the first call that needs it, from the thread making that call:
    on Linux the child is killed when that thread's process dies.
    """

    def __init__(
        self,
        options: BackendOptions,
        default_timeout_ms: int = DEFAULT_TIMEOUT_MS,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ) -> None:
        if default_timeout_ms <= 0 or load_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.options = options
        self.default_timeout_ms = default_timeout_ms
        self.load_timeout_s = load_timeout_s
        self._context = get_context("spawn")
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._conn: connection.Connection | None = None
        self._known: dict[Hashable, _Known] = {}
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
            known = self._known.get(key)
            if known is None:
                raise BackendError(f"no model is loaded under {key!r}")
            if known.ident not in self._in_child or not self._child_alive():
                self._load_in_child(known)
            what = f"running {_label(known.info)}"
            try:
                reply = self._request(("run", known.ident, feed), None, timeout_s, what)
            except _Expired:
                self.timeouts += 1
                timeout_ms = round(timeout_s * 1000)
                raise RunTimeout(
                    f"{_label(known.info)} exceeded its execution timeout of {timeout_ms} ms "
                    "and was abandoned; the backend process running it was killed",
                    timeout_ms,
                ) from None
            return self._result(reply, f"{_label(known.info)} failed")

    def unload(self, key: Hashable) -> None:
        """Forget ``key`` and release its model in the child."""
        with self._lock:
            self._forget(key)

    def close(self) -> None:
        """Stop the child and forget every model."""
        with self._lock:
            self._known.clear()
            if self._process is None or self._conn is None:
                return
            with contextlib.suppress(OSError):
                _send(self._conn, ("close",))
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
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main,
            args=(
                child_conn, self.options, os.getpid(),
                logging.getLogger().getEffectiveLevel(), _root_log_format(),
            ),
            name="inferis-backend",
            daemon=True,
        )
        process.start()
        child_conn.close()  # only the child holds its end: its death reads as EOF here
        self._process, self._conn = process, parent_conn
        self.starts += 1
        log.info("started backend process %s", process.pid)

    def _discard_child(self) -> None:
        """Kill the child (if still running) and forget everything loaded there."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        self._in_child.clear()
        if process is not None:
            if process.exitcode is None:
                process.kill()
            process.join(_SHORT_TIMEOUT_S)
            with contextlib.suppress(ValueError):
                process.close()
        if conn is not None:
            conn.close()

    def _load_in_child(self, known: _Known) -> Specs:
        if not self._child_alive():
            self._start_child()
        what = f"loading {_label(known.info)}"
        try:
            reply = self._request(
                ("load", known.ident, known.info), known.blob, self.load_timeout_s, what
            )
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
            self._request(("unload", known.ident), None, _SHORT_TIMEOUT_S, "releasing a model")
        except _Expired:
            log.warning("backend process did not release a model in time; killed it")
        except BackendError as exc:
            log.warning("%s", exc.message)

    def _request(
        self, message: Any, blob: bytes | None, timeout_s: float, what: str
    ) -> Any:
        """Send one request and wait for its reply; _Expired once the child is killed.

        Anything but a reply (timeout, death, an interrupt) kills the child, so a
        late reply can never be read as the answer to a later request.
        """
        assert self._process is not None and self._conn is not None
        process, conn, pid = self._process, self._conn, self._process.pid
        try:
            try:
                _send(conn, message)
                if blob is not None:
                    conn.send_bytes(blob)
                ready = connection.wait([conn, process.sentinel], timeout_s)
                if not ready:
                    raise _Expired
                if conn not in ready:
                    raise _ChildGone
                return _recv(conn)
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


class IsolatedModel:
    """A :class:`LoadedModel` whose runs happen in an :class:`IsolatedRunner`'s child."""

    def __init__(
        self, runner: IsolatedRunner, key: Hashable, blob: bytes, info: ModelInfo
    ) -> None:
        self.timeout_ms = execution_timeout_ms(info, runner.default_timeout_ms)
        self._runner = runner
        self._key = key
        self.inputs, self.outputs = runner.load(key, blob, info)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.run(self._key, feed, self.timeout_ms / 1000)

    def close(self) -> None:
        self._runner.unload(self._key)

"""A private ``redis-server`` with AOF on, for ``inferis up`` and the tests."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .tls import TlsFiles


class RedisServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerError(
            "redis-server is not on PATH; install it (Debian: apt-get install redis-server) "
            "or pass --redis URL"
        )
    return path


def data_dir_password(data_dir: Path) -> str:
    """The password of the private Redis kept in ``data_dir`` (made on first use,
    readable by its owner only), so a restart in the same directory keeps it."""
    path = Path(data_dir) / "password"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


class EmbeddedRedis:
    """One redis-server process on a loopback port, its data in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        extra_config: dict[str, str] | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        mutual_tls: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.password = password
        # With TLS the plain port is off: only TLS connections reach this Redis.
        self.tls = tls
        self.mutual_tls = mutual_tls
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_config = extra_config or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?{self.tls.query(self.mutual_tls)}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def _write_config(self) -> Path:
        # The config holds requirepass and the directory the AOF: this user's alone.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        config = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.data_dir.resolve()),
            "logfile": str(self.log_path.resolve()),
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": self.appendfsync,
            "save": '""',
            "daemonize": "no",
            "protected-mode": "yes",
            # A replica that (re)joins is synced at once; Redis's default waits 5 s
            # for more replicas first, and writes under WAIT stall that long.
            "repl-diskless-sync-delay": "0",
            **({"requirepass": self.password} if self.password else {}),
            **(self._tls_config() if self.tls is not None else {}),
            **self.extra_config,
        }
        path = self.data_dir / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("".join(f"{k} {v}\n" for k, v in config.items()))
        os.chmod(path, 0o600)
        return path

    def _tls_config(self) -> dict[str, str]:
        assert self.tls is not None
        return self.tls.server_config(self.port, self.mutual_tls)

    def client_options(self) -> dict[str, Any]:
        """redis-py's keyword arguments (password, TLS) for a client of this Redis."""
        tls = self.tls.options(self.mutual_tls) if self.tls is not None else {}
        return {"password": self.password, **tls}

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **self.client_options(),
                           **options)

    def probe(self) -> redis.Redis:
        """A client that fails at once instead of retrying: we poll it ourselves."""
        return self.client(socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))

    def start(self, timeout_s: float = 10.0) -> str:
        config = self._write_config()
        self.process = subprocess.Popen(
            [find_redis_server(), str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_ready(timeout_s)
        return self.url

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        client = self.probe()
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RedisServerError(f"redis-server exited: {self.log_tail()}")
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    pass  # still replaying its AOF
                except redis.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise RedisServerError(f"redis-server did not answer within {timeout_s}s")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: the crash case; only what the AOF holds survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SHUTDOWN flushes the AOF, then the process exits."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.probe().shutdown()
        except redis.ConnectionError:
            pass  # the expected end of SHUTDOWN
        except (redis.ResponseError, redis.TimeoutError):
            # refused, or waiting on a replica that does not catch up: SIGTERM
            # shuts down too (and saves the AOF) without waiting for replicas
            self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

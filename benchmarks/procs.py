"""Subprocess servers on loopback: start with a log file, wait until ready, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
import psutil

from inferis.engine.local.embedded import free_port

__all__ = ["ServerProcess", "free_port"]


class ServerProcess:
    """One server command (it may fork helpers); its output goes to ``log``."""

    def __init__(
        self,
        cmd: Sequence[str | Path],
        log: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cmd = [str(c) for c in cmd]
        self.log = log
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            # A session of its own: helpers it forks never get the benchmark's signals.
            self.process = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    async def wait_http(self, url: str, timeout_s: float) -> None:
        """Poll ``url`` until it answers 200; fail early if the server exits."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"server exited while starting:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.25)
        raise RuntimeError(f"{url} not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    async def wait_file(self, path: Path, timeout_s: float) -> None:
        """Wait until the server writes ``path`` (its own "I am ready")."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if path.exists():
                return
            if not self.alive():
                raise RuntimeError(f"server exited while starting:\n{self.log_tail()}")
            await asyncio.sleep(0.25)
        raise RuntimeError(f"not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the server, then SIGKILL whatever it started that is still running."""
        if self.process is None:
            return
        try:
            family = [psutil.Process(self.process.pid)]
            family += family[0].children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.process = None

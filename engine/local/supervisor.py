"""Start, watch and stop worker processes (``inferis up`` and the tests)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)


def worker_command(redis_url: str, extra_args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "inferis.engine", "worker", "--redis", redis_url, *extra_args]


class WorkerPool:
    """N worker processes; a worker that dies unexpectedly is restarted. The pool can
    grow and shrink (the autoscaler): a worker let go gets SIGTERM, so it runs and
    answers what it holds before it exits, and is not restarted."""

    def __init__(
        self,
        redis_url: str,
        count: int,
        extra_args: Sequence[str] = (),
        metrics_base_port: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.count = count
        self.extra_args = list(extra_args)
        self.metrics_base_port = metrics_base_port
        self.env = dict(env) if env is not None else None  # None: inherit
        self.processes: list[subprocess.Popen[bytes]] = []
        self.leaving: list[subprocess.Popen[bytes]] = []  # let go, still draining
        self.drained: list[int] = []  # exit statuses of the workers let go
        self.restarts = 0

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        args = list(self.extra_args)
        if self.metrics_base_port:  # one /metrics port per worker
            args += ["--metrics-port", str(self.metrics_base_port + index)]
        return subprocess.Popen(worker_command(self.redis_url, args), env=self.env)

    def start(self) -> None:
        self.processes = [self._spawn(i) for i in range(self.count)]

    def watch(self) -> None:
        """Replace workers that exited; forget the let-go ones that finished. Call
        periodically."""
        for index, process in enumerate(self.processes):
            code = process.poll()
            if code is not None:
                log.warning("worker pid %d exited with %s; starting another", process.pid, code)
                self.processes[index] = self._spawn(index)
                self.restarts += 1
        for process in list(self.leaving):
            code = process.poll()
            if code is not None:
                self.leaving.remove(process)
                self.drained.append(code)
                log.info("worker pid %d drained and exited (%s)", process.pid, code)

    def grow(self) -> None:
        self.processes.append(self._spawn(len(self.processes)))
        self.count = len(self.processes)

    def shrink(self) -> None:
        """Let the newest worker go: SIGTERM, and it drains on its own."""
        process = self.processes.pop()
        self.count = len(self.processes)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            self.leaving.append(process)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM: each worker finishes its batch and exits; SIGKILL after the grace."""
        everyone = [*self.processes, *self.leaving]
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in everyone:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(remaining)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
        self.processes, self.leaving = [], []

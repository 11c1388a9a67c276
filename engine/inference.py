"""The worker's inference thread: models run here while the I/O loop keeps reading.

The I/O loop reads, validates and batches requests (a Job) and hands them over;
this thread runs the batch and writes its answers on a connection of its own.
At most one Job waits while another runs, so a worker never holds more than
two batches that other workers could have served.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from .batching import Prepared
from .executor import Outcome

log = logging.getLogger(__name__)

# How long answering keeps retrying while Redis is away: completion is
# idempotent (acknowledge-first), so retrying is safe; after that the requests
# stay pending and are reclaimed.
COMPLETE_RETRY_S = 10.0


@dataclass
class Job:
    outcomes: list[Outcome]
    prepared: list[Prepared]
    started_ms: int
    commands: list[list[Any]] = field(default_factory=list)  # dead letters etc.


Run = Callable[[list[Prepared]], None]
Finish = Callable[[Job, redis.Redis], None]


class InferenceThread:
    def __init__(self, run: Run, finish: Finish, connect: Callable[[], redis.Redis]) -> None:
        self._run = run
        self._finish = finish
        self._connect = connect
        self._conn: redis.Redis | None = None
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._loop, name="inferis-inference", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Hand a job over; blocks while one job is already waiting."""
        self._jobs.put(job)

    def stop(self) -> None:
        """Finish every job handed over, then end the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            try:
                self._run(job.prepared)
            except Exception:  # a bug, not a request error: answer what we can
                log.exception("running a batch failed")
            self._answer(job)
        if self._conn is not None:
            self._conn.close()

    def _answer(self, job: Job) -> None:
        deadline = time.monotonic() + COMPLETE_RETRY_S
        delay = 0.05
        while True:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                self._finish(job, self._conn)
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._conn = None
                if time.monotonic() + delay > deadline:
                    log.warning("could not answer %d request(s) (%s); they stay pending "
                                "and will be reclaimed", len(job.outcomes), exc)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception:
                log.exception("answering a batch failed; its requests stay pending")
                return

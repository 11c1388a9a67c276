"""The order of work: models in turn, callers in turn, so no backlog holds up the rest.

A partition's stream is first in, first out across every model and caller. A
worker that ran entries in stream order would make a fast model's request wait
behind every slow request queued before it, and a calm caller behind a flood.
So the worker reads ahead (up to ``read_ahead`` requests, held pending in
Redis under its name: a crash loses none of them) and runs what it holds in
turns: each model with work gets one turn before any model gets a second, and
within a turn the callers' requests are taken one each in rotation. What it holds is bounded
twice: by count, and by the time it would take to run (``hold_ms``, from the
cost per request it has measured), so that a worker added under a burst finds
work left in the stream rather than all of it held by the first. A turn is
one batch of a model that batches; of one that does not, requests one by one
until a quantum of time is used (one request of a slow model, many of a fast
one). A slice of turns ends after ``slice_ms``; its finished entries are
answered and more is read.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from inferis.client.protocol import keys
from inferis.client.protocol.entries import Entry
from inferis.client.protocol.errors import DeadlineExceeded

from .request import Request

# A model that does not batch runs requests until its turn has used this long,
# or this many: others wait little, and a model alone pays little for turns.
TURN_QUANTUM_S = 0.0005
TURN_REQUESTS = 32

ModelKey = tuple[str, int]


@dataclass(slots=True, eq=False)
class Held:
    """An entry read and not yet answered: answered once none of its requests waits."""

    entry: Entry
    requests: list[Request] = field(default_factory=list)
    waiting: int = 0


class Scheduler:
    def __init__(self, read_ahead: int, slice_ms: float, hold_ms: float = 1000.0) -> None:
        self.read_ahead = max(1, read_ahead)
        self.slice_s = slice_ms / 1000
        self.hold_s = hold_ms / 1000
        self.cost_s = 0.0  # what one request has taken to run, smoothed
        self._queues: OrderedDict[ModelKey, OrderedDict[str, deque[Request]]] = OrderedDict()
        self._held: dict[tuple[str, str], Held] = {}
        self.waiting = 0  # requests held and not yet run

    @property
    def full(self) -> bool:
        return self.waiting >= self.read_ahead or self.waiting * self.cost_s >= self.hold_s

    def holds(self, stream: str, entry_id: str) -> bool:
        return (stream, entry_id) in self._held

    def held_ids(self, stream: str) -> list[str]:
        return [entry_id for (s, entry_id) in self._held if s == stream]

    def add(self, entries: Iterable[Entry], requests: Iterable[Request]) -> list[Held]:
        """Hold prepared requests; return the entries with nothing to run (all failed)."""
        added = []
        for entry in entries:
            held = Held(entry)
            self._held[entry.stream, entry.entry_id] = held
            added.append(held)
        for request in requests:
            held = self._held[request.entry.stream, request.entry.entry_id]
            held.requests.append(request)
            if not request.ready:
                continue
            held.waiting += 1
            self.waiting += 1
            info = request.info
            assert info is not None
            callers = self._queues.setdefault((info.name, info.version), OrderedDict())
            caller = keys.caller_of(request.entry.reply) or request.entry.reply
            callers.setdefault(caller, deque()).append(request)
        return [self._release(held) for held in added if held.waiting == 0]

    def run_slice(
        self, execute: Callable[[list[Request]], None], now_ms: Callable[[], int]
    ) -> tuple[list[Held], list[Request]]:
        """Run turns until nothing waits or the slice is over; return the entries now
        finished and the requests that ran."""
        finished: list[Held] = []
        ran: list[Request] = []
        started = time.perf_counter()
        ends = started + self.slice_s
        while self._queues:
            key = next(iter(self._queues))
            callers = self._queues[key]
            turn = self._turn(callers, execute, now_ms())
            self._queues.move_to_end(key)  # the others go first next time
            if not callers:
                del self._queues[key]
            ran += turn
            self.waiting -= len(turn)
            for request in turn:
                held = self._held[request.entry.stream, request.entry.entry_id]
                held.waiting -= 1
                if held.waiting == 0:
                    finished.append(self._release(held))
            if time.perf_counter() >= ends:
                break
        if ran:
            cost = (time.perf_counter() - started) / len(ran)
            self.cost_s = cost if not self.cost_s else 0.8 * self.cost_s + 0.2 * cost
        return finished, ran

    def _turn(
        self, callers: OrderedDict[str, deque[Request]],
        execute: Callable[[list[Request]], None], now_ms: int,
    ) -> list[Request]:
        """One model's turn: a batch, or requests one by one for a quantum."""
        first = next(iter(callers.values()))[0]
        assert first.info is not None
        batching = first.info.batching
        if batching.enabled:
            turn = self._take(callers, batching.max_batch_size, now_ms)
            execute([r for r in turn if r.error is None])
            return turn
        turn = []
        ends = time.perf_counter() + TURN_QUANTUM_S
        while callers and len(turn) < TURN_REQUESTS:
            one = self._take(callers, 1, now_ms)
            execute([r for r in one if r.error is None])
            turn += one
            if time.perf_counter() >= ends:
                break
        return turn

    @staticmethod
    def _take(callers: OrderedDict[str, deque[Request]], rows: int, now_ms: int) -> list[Request]:
        """Up to ``rows`` rows of requests, the callers' one each in rotation."""
        taken: list[Request] = []
        while callers and rows > 0:
            caller, queue = next(iter(callers.items()))
            request = queue.popleft()
            if not queue:
                del callers[caller]
            else:
                callers.move_to_end(caller)
            if now_ms > request.spec.deadline_ms:  # it waited here past its deadline
                request.fail(DeadlineExceeded(
                    f"request {request.rid} waited at the worker until "
                    f"{now_ms - request.spec.deadline_ms} ms after its deadline"
                ))
            taken.append(request)
            rows -= request.rows or 1
        return taken

    def _release(self, held: Held) -> Held:
        del self._held[held.entry.stream, held.entry.entry_id]
        return held

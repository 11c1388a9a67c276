"""The one record a request is, from the moment a worker reads it to its answer.

Admission creates it from the stream entry, the executor fills in the model
and the feed and then the results (or the error), completion turns it into an
answer and acknowledges its entry. Nothing copies it into another shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inferis.client.protocol.aliases import AliasRoute
from inferis.client.protocol.entries import Entry, RunRequest
from inferis.client.protocol.errors import InferisError
from inferis.client.protocol.models import ModelInfo

from ..backends.base import LoadedModel


@dataclass(slots=True)
class CacheSlot:
    """Where a cacheable request's answer is kept (prediction_cache.py)."""

    key: str  # the entry
    index: str  # the model's sorted set of entries in this partition
    member: str  # <digest>:<inputs hash>, the entry's member of the index
    ttl_ms: int
    max_entries: int
    hit: bool = False


@dataclass(slots=True, eq=False)
class Request:
    spec: RunRequest  # what the caller asked
    entry: Entry  # the stream entry that carries it: the unit Redis acknowledges
    # Filled in by the executor once the request passed its checks:
    info: ModelInfo | None = None
    model: LoadedModel | None = None
    feed: dict[str, np.ndarray] = field(default_factory=dict)
    rows: int | None = None  # first dimension shared by every input (None: not batchable)
    output_names: list[str] = field(default_factory=list)
    route: AliasRoute | None = None  # the alias that chose the version, if any
    cache: CacheSlot | None = None  # set when its answer may come from, or go to, the cache
    # The outcome:
    results: dict[str, np.ndarray] = field(default_factory=dict)
    error: InferisError | None = None
    run_us: int = 0
    batch_size: int = 1  # requests that ran in the same backend call
    # Outputs as encoded tensors, once: read from the cache, or encoded for the answer.
    encoded: list[tuple[str, bytes]] | None = None

    @property
    def rid(self) -> str:
        return self.spec.rid

    @property
    def ready(self) -> bool:
        """Checked and waiting for the backend."""
        return self.error is None and self.model is not None and not self.results

    def fail(self, error: InferisError) -> None:
        self.error = error
        self.results = {}
        self.encoded = None

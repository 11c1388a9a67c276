"""What every system under test provides to the runner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..loadgen import Caller
from ..workloads import Workload


class TargetUnavailable(RuntimeError):
    """The system could not be installed or started here; the run goes on without it."""


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by all targets of one run."""

    work_dir: Path
    workers: int = 2  # inferis workers; the other engines get as many processes
    inferis_batch: tuple[int, int] = (64, 0)  # (max_batch_size, max_queue_delay_us)
    inferis_ttl_ms: int | None = None  # TTL of request tensors; None: the SDK's default
    engine_batch: tuple[int, float] = (64, 1.0)  # (max batch size, max wait ms) of others
    request_timeout_s: float = 30.0
    start_timeout_s: float = 180.0


async def _nothing() -> None:
    return None


@dataclass
class Series:
    """One line in the plot: how to open a caller for a given concurrency."""

    label: str
    open: Callable[[int], Awaitable[Caller]] | None = None
    close: Callable[[], Awaitable[None]] = _nothing
    # A plain function run back to back in one thread instead (in-process floor).
    blocking: Callable[[int], object] | None = None
    # Fixed concurrency points (None: the sweep's).
    concurrencies: tuple[int, ...] | None = None


# One configuration of a system, from its own documented settings.
Variant = dict[str, object]


def variant_label(variant: Variant) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant.items())


@dataclass
class Target:
    """Base class: start once, serve every selected workload, stop.

    A system is measured in each configuration of :meth:`variants` (a small
    sweep of the settings its documentation offers); the report takes its best.
    """

    name: str = ""
    # How this system is driven and what it is given: printed under the table.
    note: str = ""
    settings: dict[str, object] = field(default_factory=dict)
    variant: Variant = field(default_factory=dict)

    @classmethod
    def variants(cls, config: RunConfig) -> list[Variant]:
        return [{}]

    @property
    def label(self) -> str:
        """The series name: the system and its configuration."""
        return f"{self.name} [{variant_label(self.variant)}]" if self.variant else self.name

    async def start(self, workloads: list[Workload], config: RunConfig) -> None:
        raise NotImplementedError

    def series(self, workload: Workload) -> list[Series]:
        raise NotImplementedError

    def returned_outputs(self, workload: Workload) -> list[str]:
        """The outputs this system sends back (and so the ones checked)."""
        return list(workload.output_names)

    async def answer(self, workload: Workload, index: int) -> dict[str, np.ndarray] | None:
        """The system's outputs for request ``index`` (None: nothing to check)."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

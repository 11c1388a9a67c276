"""The backend interface every framework plugs into.

A backend turns a verified model blob into a :class:`LoadedModel` that knows
its own signature and runs one feed (a dict of named numpy arrays). The worker
validates requests against that signature before calling ``run``, so a
backend only ever sees inputs of the right names, dtypes and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from inferis.client.core import ModelInfo

# A backend that cannot tell an input's dtype reports this; it is not checked.
ANY_DTYPE = "any"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: wire dtype name and shape (None marks a dynamic dim)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None = None  # None: rank unknown

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name}: {self.dtype}[...]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def gpu_index(device: str) -> int | None:
    """``GPU``/``GPU:1``/``CUDA:0`` -> device index; CPU -> None."""
    text = device.upper()
    if not (text.startswith("GPU") or text.startswith("CUDA")):
        return None
    _, _, index = text.partition(":")
    return int(index) if index else 0


@dataclass(frozen=True)
class BackendOptions:
    """How a worker runs models: its device and thread budget."""

    device: str = "CPU"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Formats that execute code on load (pickle) are refused unless trusted.
    trust_unsafe_formats: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class LoadedModel(Protocol):
    """A model ready to run. ``inputs``/``outputs`` come from the model itself."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one feed; return every output by name."""
        ...

    def close(self) -> None:
        """Release what the model holds (sessions, temp dirs, device memory)."""
        ...


class Backend(Protocol):
    """A framework adapter; ``load`` may raise any exception (reported as EBACKEND)."""

    name: str

    def load(self, blob: bytes, info: ModelInfo, options: BackendOptions) -> LoadedModel:
        ...

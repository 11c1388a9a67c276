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

from inferis.client.protocol.errors import BackendError
from inferis.client.protocol.models import ANY_DTYPE, UNSUPPORTED_DTYPE, ModelInfo, TensorSpec

__all__ = [
    "ANY_DTYPE", "UNSUPPORTED_DTYPE", "Backend", "BackendOptions", "LoadedModel", "ModelInfo",
    "RunTimeout", "TensorSpec", "gpu_index",
]


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
    # What one model archive may unpack to (archives.py also bounds it by the blob).
    max_unpacked_bytes: int = 4096 * 1024 * 1024
    max_archive_entries: int = 100_000
    # Signed models (client/signing.py): raw ed25519 public keys a signature must be
    # made by, and whether an unsigned version is refused.
    trusted_keys: tuple[bytes, ...] = ()
    require_signatures: bool = False
    # Models encrypted at rest (client/encryption.py): envelope keys by key id. Kept
    # out of repr, so no log line shows them.
    model_keys: dict[str, bytes] = field(default_factory=dict, repr=False)


class RunTimeout(BackendError):
    """A run exceeded its execution timeout; the process running it was killed."""

    def __init__(self, message: str, timeout_ms: int) -> None:
        super().__init__(message)
        self.timeout_ms = timeout_ms

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.timeout_ms))


class LoadedModel(Protocol):
    """A model ready to run. ``inputs``/``outputs`` come from the model itself;
    ``device`` is where it runs (``CPU``, ``GPU:0``), which may differ from the
    device the version asked for when this worker has none."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: str

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

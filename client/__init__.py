"""The inferis client SDK: tensors, models and runs over plain Redis.

Light on purpose: it needs redis, hiredis, numpy and msgpack (and cryptography for
signed and encrypted models), no ML framework.

    from inferis.client import Client
    with Client("redis://localhost:6379") as c:
        c.predict("iris", {"input": features})

``protocol/`` holds what the client, the workers and the Functions library
agree on; ``operations.py`` every call, once; ``sync.py`` and ``aio.py`` the
two transports.
"""

from .aio import AsyncClient
from .operations import CanaryGuard, Ref
from .protocol.errors import (
    AccuracyError,
    ArgumentError,
    BackendError,
    BackendUnavailableError,
    BusyError,
    ConnectionLostError,
    DeadLetteredError,
    DeadlineExceeded,
    DigestError,
    InferisError,
    InputError,
    LibraryMissingError,
    ModelNotFoundError,
    NoAnswerError,
    OutcomeUnknownError,
    OutOfMemoryError,
    PermissionDeniedError,
    RedisRefusedError,
    ReplicationError,
    SignatureError,
    TensorError,
    UnsafeModelError,
)
from .protocol.models import Batching, ModelInfo, StoredVersion, TensorSpec
from .protocol.replies import RunResult
from .protocol.tensor import decode_tensor, encode_tensor
from .sync import Client, PendingRun

__all__ = [
    "AccuracyError",
    "ArgumentError",
    "AsyncClient",
    "BackendError",
    "BackendUnavailableError",
    "Batching",
    "BusyError",
    "CanaryGuard",
    "Client",
    "ConnectionLostError",
    "DeadLetteredError",
    "DeadlineExceeded",
    "DigestError",
    "InferisError",
    "InputError",
    "LibraryMissingError",
    "ModelInfo",
    "ModelNotFoundError",
    "NoAnswerError",
    "OutOfMemoryError",
    "OutcomeUnknownError",
    "PendingRun",
    "PermissionDeniedError",
    "RedisRefusedError",
    "Ref",
    "ReplicationError",
    "RunResult",
    "SignatureError",
    "StoredVersion",
    "TensorError",
    "TensorSpec",
    "UnsafeModelError",
    "decode_tensor",
    "encode_tensor",
]

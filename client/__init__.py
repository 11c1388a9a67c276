"""The inferis client SDK: tensors, models and runs over plain Redis.

Light on purpose: it needs redis, hiredis, numpy and msgpack, no ML framework.

    from inferis.client import Client
    with Client("redis://localhost:6379") as c:
        c.predict("iris", {"input": features})
"""

from .async_client import AsyncClient
from .core import ModelInfo, Ref, RunResult, StoredVersion
from .errors import (
    ArgumentError,
    BackendError,
    BackendUnavailableError,
    BusyError,
    DeadLetteredError,
    DeadlineExceeded,
    DigestError,
    InferisError,
    InputError,
    ModelNotFoundError,
    NoAnswerError,
    ReplicationError,
    TensorError,
    UnsafeModelError,
)
from .sync_client import Client
from .tensor import decode_tensor, encode_tensor

__all__ = [
    "ArgumentError",
    "AsyncClient",
    "BackendError",
    "BackendUnavailableError",
    "BusyError",
    "Client",
    "DeadLetteredError",
    "DeadlineExceeded",
    "DigestError",
    "InferisError",
    "InputError",
    "ModelInfo",
    "ModelNotFoundError",
    "NoAnswerError",
    "Ref",
    "ReplicationError",
    "RunResult",
    "StoredVersion",
    "TensorError",
    "UnsafeModelError",
    "decode_tensor",
    "encode_tensor",
]

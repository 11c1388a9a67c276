"""Key names. Every key of one request shares the hash tag of its partition.

A partition ``p`` has the hash tag ``inferis:p``; in Redis Cluster all its
keys (request stream, reply streams, request tensors) live in one slot, so a
run touches one shard. Model keys use the model name as their hash tag.
"""

from __future__ import annotations

import re

GROUP = "inferis"
MODELS_CHANNEL = "inferis:models"
FUNCTION_LIBRARY = "inferis"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def partition_tag(partition: int) -> str:
    return f"{{inferis:{partition}}}"


def request_stream(partition: int = 0) -> str:
    return f"{partition_tag(partition)}:requests"


def deadletter_stream(partition: int = 0) -> str:
    return f"{partition_tag(partition)}:deadletter"


def partition_config(partition: int = 0) -> str:
    return f"{partition_tag(partition)}:config"


def reply_stream(partition: int, client_id: str) -> str:
    return f"{partition_tag(partition)}:replies:{client_id}"


def request_key(partition: int, rid: str, part: str) -> str:
    """A key owned by one request, e.g. ``request_key(0, rid, "in:0")``."""
    return f"{partition_tag(partition)}:r:{rid}:{part}"


def base_of(stream: str) -> str:
    """The hash-tag prefix shared by keys created for requests on ``stream``."""
    open_ = stream.find("{")
    close = stream.find("}", open_ + 1) if open_ >= 0 else -1
    if open_ < 0 or close <= open_ + 1:
        return stream
    return stream[open_ : close + 1]


def model_key(name: str, part: str) -> str:
    return f"inferis:{{{name}}}:{part}"


def is_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name))

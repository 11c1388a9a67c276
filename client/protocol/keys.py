"""Every key name. All keys of one request share the hash tag of its partition.

A partition ``p`` has the hash tag ``{inferis:p}``; in Redis Cluster all its
keys (request stream, reply streams, request tensors, dead letters) live in
one slot, so a run touches one shard. Model keys use the model name as their
hash tag: ``inferis:{<name>}:...``.
"""

from __future__ import annotations

import re
import zlib
from functools import cache

from redis.crc import key_slot

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


# ---------------------------------------------------------------- hash tags


def hash_tag(key: str) -> str | None:
    """The tag as Redis Cluster finds it: between the first ``{`` and the next ``}``."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def base_of(key: str) -> str:
    """The ``{tag}`` prefix keys created next to ``key`` share (``key`` itself if untagged)."""
    tag = hash_tag(key)
    return key if tag is None else "{" + tag + "}"


def partition_tag(partition: int, region: str = "") -> str:
    """``{inferis:N}``; in an Active-Active deployment ``{inferis:N@<region>}``: each
    region queues and answers its own requests under its own keys, so no other
    region's workers ever see them (docs/ACTIVE-ACTIVE.md)."""
    return f"{{inferis:{partition}@{region}}}" if region else f"{{inferis:{partition}}}"


def partition_of(key: str) -> int | None:
    """The partition whose tag ``key`` carries (whatever its region), or None."""
    tag = hash_tag(key)
    if tag is None or not tag.startswith("inferis:"):
        return None
    number = tag[len("inferis:"):].partition("@")[0]
    return int(number) if number.isdigit() else None


REGIONS = "inferis:regions"  # the deployment's regions in order, "eu,us,ap" (set once)
_REGION_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def is_region_name(name: str) -> bool:
    return bool(_REGION_NAME.match(name))


def region_index(regions: str, region: str) -> int | None:
    """``region``'s index (1-based) in the deployment's ordered list, or None."""
    names = [n.strip() for n in regions.split(",") if n.strip()]
    return names.index(region) + 1 if region in names else None


def slot_of(key: str) -> int:
    """The Redis Cluster slot of ``key`` (CRC16 of its hash tag, mod 16384)."""
    return int(key_slot(key.encode()))


@cache
def spread_partitions(count: int, region: str = "") -> tuple[int, ...]:
    """Partitions whose tags fall one in each ``1/count`` of the slot space, so that
    a cluster whose primaries own contiguous ranges of at least that size has
    partitions on every primary. Deterministic: clients and workers agree."""
    width = 16384 / count
    found: dict[int, int] = {}
    number = 0
    while len(found) < count:
        index = int(slot_of(partition_tag(number, region)) // width)
        found.setdefault(index, number)
        number += 1
    return tuple(found[i] for i in range(count))


def partition_for(routing_key: str, partitions: tuple[int, ...] | list[int]) -> int:
    """A stable choice among ``partitions`` for a routing key (a user id, say)."""
    return partitions[zlib.crc32(routing_key.encode()) % len(partitions)]


# ---------------------------------------------------------------- partition keys


def request_stream(partition: int = 0, region: str = "") -> str:
    return f"{partition_tag(partition, region)}:requests"


def deadletter_stream(partition: int = 0, region: str = "") -> str:
    return f"{partition_tag(partition, region)}:deadletter"


def partition_config(partition: int = 0, region: str = "") -> str:
    """Hash: ``queued`` (kept by the Functions; callers' runs write it)."""
    return f"{partition_tag(partition, region)}:config"


def partition_limits(partition: int = 0, region: str = "") -> str:
    """Hash: ``max_queue``, ``max_queue_per_caller``, ``deadletter_maxlen``, set by the
    operator; callers only read it."""
    return f"{partition_tag(partition, region)}:limits"


def reply_stream(partition: int, client_id: str, region: str = "") -> str:
    return f"{partition_tag(partition, region)}:replies:{client_id}"


def caller_of(reply: str) -> str | None:
    """The caller a reply stream names, as the Functions count it: the client id is
    ``<caller>-<hex>`` (``Client(caller=)``) or just hex (each client its own)."""
    _, sep, client_id = reply.rpartition(":replies:")
    if not sep or not client_id:
        return None
    caller, dash, suffix = client_id.rpartition("-")
    if dash and caller and suffix and all(c in "0123456789abcdefABCDEF" for c in suffix):
        return caller
    return client_id


def request_key(base: str, rid: str, part: str) -> str:
    """A key owned by one request, e.g. ``request_key("{inferis:0}", rid, "out:Y")``."""
    return f"{base}:r:{rid}:{part}"


def done_list(base: str, rid: str) -> str:
    """Where a request without a reply stream is answered (one JSON line)."""
    return request_key(base, rid, "done")


def output_key(base: str, rid: str, name: str) -> str:
    """Where an output the caller did not name a key for is written."""
    return request_key(base, rid, f"out:{name}")


def config_of(stream: str) -> str:
    """The config hash beside a request stream."""
    return f"{base_of(stream)}:config"


def deadletter_of(stream: str) -> str:
    return f"{base_of(stream)}:deadletter"


def prediction_index(base: str, model: str) -> str:
    """Sorted set of ``model``'s cached answers in one partition: member
    ``<digest>:<inputs hash>``, score the entry's expiry (ms) x 1000 + a sequence."""
    return f"{base}:cache:{model}"


def prediction_key(base: str, model: str, member: str) -> str:
    """One cached answer, in the partition (the slot) of the requests it answers."""
    return prediction_key_in(prediction_index(base, model), member)


def prediction_key_in(index: str, member: str) -> str:
    return f"{index}:{member}"


# ---------------------------------------------------------------- model keys


def model_base(name: str) -> str:
    """What model Functions take as KEYS[1]: ``inferis:{<name>}``, so ACL key patterns
    (``%R~inferis:{*}*``) can grant them, in the slot of every key of the model."""
    return f"inferis:{{{name}}}"


def model_key(name: str, part: str) -> str:
    return f"inferis:{{{name}}}:{part}"


def cache_settings(name: str) -> str:
    """Hash: the operator's prediction-cache settings of a model and its aliases."""
    return model_key(name, "cache")


def model_name_of(key: bytes | str) -> str:
    """The model name inside an ``inferis:{<name>}:...`` key."""
    text = key.decode() if isinstance(key, bytes) else key
    return text[text.index("{") + 1 : text.rindex("}")]


MODEL_VERSIONS_PATTERN = "inferis:{*}:versions"  # one key per model that has a version


def is_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name))


def is_request_id(rid: str) -> bool:
    return bool(_REQUEST_ID.match(rid))

"""Which partitions a worker serves.

On a single Redis, the partitions it is told (``0`` by default). In a Redis
Cluster, by default (``auto``) the spread partitions (client/protocol/keys.py)
whose slots the shard of its home node holds: a worker sits beside a shard and
serves what lives there, and follows slots when they move. ``all`` serves every
spread partition, wherever it is; a list serves exactly those.
"""

from __future__ import annotations

from inferis.client.protocol import keys
from inferis.client.routing import Routes, parse_cluster_url

from ..config import ConfigError


def home_node(url: str) -> str:
    """The node a cluster worker sits beside: the first one its URL names."""
    host, port = parse_cluster_url(url).hosts[0]
    return f"{host}:{port}"


def assigned(spec: str, routes: Routes, count: int, home: str = "") -> list[int]:
    text = spec.strip().lower()
    if text not in ("auto", "all"):
        try:
            listed = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(
                f"--partitions takes auto, all or numbers like 0,1, got {spec!r}"
            ) from None
        if not listed or min(listed) < 0:
            raise ConfigError(f"--partitions takes auto, all or numbers like 0,1, got {spec!r}")
        return listed
    if routes.cluster is None:
        return [0]
    spread = list(keys.spread_partitions(count))
    if text == "all":
        return spread
    slots = routes.cluster.nodes_manager.slots_cache
    mine = []
    for partition in spread:
        shard = slots.get(keys.slot_of(keys.partition_tag(partition))) or []
        if home in {node.name for node in shard}:
            mine.append(partition)
    return mine

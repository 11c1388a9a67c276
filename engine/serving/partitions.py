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


class Home:
    """The shard a cluster worker sits beside: the one its home node (the first node
    its URL names) is in, primary or replica. While that node is away (its
    redis-server died and a replica took over) the shard it was last in."""

    def __init__(self, url: str) -> None:
        host, port = parse_cluster_url(url).hosts[0]
        self.node = f"{host}:{port}"
        self.shard: frozenset[str] = frozenset({self.node})

    def holds(self, shard: frozenset[str]) -> bool:
        return bool(shard & self.shard)

    def follow(self, shards: set[frozenset[str]]) -> None:
        """Note the shard the home node is in now (if it is in one)."""
        for shard in shards:
            if self.node in shard:
                self.shard = shard
                return
        for shard in shards:  # home away: the shard its old peers are in
            if shard & self.shard:
                self.shard = shard | {self.node}
                return


def assigned(
    spec: str, routes: Routes, count: int, home: Home | None = None, region: str = ""
) -> list[int]:
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
    spread = list(keys.spread_partitions(count, region))
    if text == "all" or home is None:
        return spread
    slots = routes.cluster.nodes_manager.slots_cache
    shard_of = {
        p: frozenset(n.name for n in slots.get(keys.slot_of(keys.partition_tag(p, region))) or [])
        for p in spread
    }
    home.follow(set(shard_of.values()))
    return [p for p in spread if home.holds(shard_of[p])]

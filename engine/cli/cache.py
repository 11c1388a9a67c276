"""``inferis model cache``: see or set a model's (or an alias's) prediction cache."""

from __future__ import annotations

import argparse

from inferis.client import Client
from inferis.client.protocol import caching
from inferis.client.protocol.errors import ArgumentError

COMMANDS = ("cache",)


def add_commands(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    c = msub.add_parser(
        "cache", parents=[common],
        help="cache a model's answers (or an alias's) in Redis; without options, show")
    c.add_argument("name")
    c.add_argument("--alias", default=None, help="only requests through this alias")
    c.add_argument("--ttl-ms", type=int, default=None,
                   help="how long an answer is kept (0: caching off at this level)")
    c.add_argument("--max-entries", type=int, default=None,
                   help="answers kept per partition, the oldest out first (default 10000)")
    c.add_argument("--unset", action="store_true",
                   help="remove this level's setting: the next one applies (alias, model, "
                        "version)")


def _describe(policy: caching.CachePolicy | None) -> str:
    if policy is None:
        return "not set"
    if not policy.enabled:
        return "off"
    return f"ttl {policy.ttl_ms} ms, at most {policy.max_entries} per partition"


def run(client: Client, ns: argparse.Namespace) -> None:
    if ns.unset and (ns.ttl_ms is not None or ns.max_entries is not None):
        raise ArgumentError("--unset takes no --ttl-ms or --max-entries")
    if ns.ttl_ms is None and ns.max_entries is not None:
        raise ArgumentError("--max-entries needs --ttl-ms")
    if ns.unset or ns.ttl_ms is not None:
        client.set_cache(ns.name, None if ns.unset else ns.ttl_ms, ns.max_entries, alias=ns.alias)
    settings = client.cache_settings(ns.name)
    latest = client.modelget(ns.name)
    print(f"{ns.name}: model {_describe(settings.model)}; "
          f"{latest.label} (stored) {_describe(caching.policy_of_meta(latest.extra))}")
    for alias, policy in sorted(settings.aliases.items()):
        print(f"  alias {alias}: {_describe(policy)}")
    stats = client.modelstats(ns.name)
    hits, misses = stats.get("cache_hits", 0), stats.get("cache_misses", 0)
    rate = f" ({hits / (hits + misses):.1%} hits)" if hits + misses else ""
    print(f"  hits {hits}, misses {misses}{rate}")

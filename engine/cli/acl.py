"""``inferis acl ROLE``: the ACL rules of a role, printed or applied."""

from __future__ import annotations

import argparse

import redis

from inferis.client.connection import is_sentinel_url, parse_sentinel_url
from inferis.client.routing import is_cluster_url, parse_cluster_url

from .. import acl
from ..config import ConfigError


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser(
        "acl", parents=[common],
        help="ACL SETUSER rules for a client, worker, admin or feedback role")
    cmd.add_argument("role", choices=acl.ROLES)
    cmd.add_argument("--user", required=True)
    cmd.add_argument("--password", required=True)
    cmd.add_argument("--prefix", default="",
                     help="client: its tensor keys are {inferis:N}:<prefix>... (key_for)")
    cmd.add_argument("--caller", default="",
                     help="client: its reply streams are its caller's (Client(caller=...)), "
                          "so its queue bound per caller cannot be dodged (with --prefix: "
                          "without one its tensor pattern covers every partition key)")
    cmd.add_argument("--apply", action="store_true",
                     help="run it on every data node of --redis: the node of a redis:// URL, "
                          "the primary and replicas of a sentinel URL, every node of a "
                          "cluster URL (ACLs are not replicated)")
    cmd.add_argument("--redis", default="redis://localhost:6379")
    cmd.set_defaults(handler=cmd_acl)


def cmd_acl(ns: argparse.Namespace) -> int:
    try:
        words = acl.setuser(ns.user, ns.role, ns.password, ns.prefix, ns.caller)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not ns.apply:
        print(acl.format_command(words))
        return 0
    for conn, name in _nodes(ns.redis):
        with conn:
            conn.execute_command(*words)
        print(f"{ns.role} user {ns.user} set on {name}")
    return 0


def _nodes(url: str) -> list[tuple[redis.Redis, str]]:
    """Every data node of the deployment: ACL rules are each node's own (Redis does
    not replicate ACL SETUSER), so a role is set on each primary and replica."""
    if is_sentinel_url(url):
        return _sentinel_nodes(url)
    if not is_cluster_url(url):
        return [(redis.Redis.from_url(url), url.rsplit("@", 1)[-1])]
    target = parse_cluster_url(url)
    options = {"username": target.username, "password": target.password, **target.tls}
    with redis.Redis(host=target.hosts[0][0], port=target.hosts[0][1], **options) as first:
        # CLUSTER NODES names replicas too (redis-py's slot map may not yet)
        listed = first.execute_command("CLUSTER NODES")
    nodes = []
    for address, info in listed.items():
        if "fail" in info.get("flags", "") or "noaddr" in info.get("flags", ""):
            continue
        host, _, port = address.partition("@")[0].rpartition(":")
        nodes.append((redis.Redis(host=host, port=int(port), **options), f"{host}:{port}"))
    return nodes


def _sentinel_nodes(url: str) -> list[tuple[redis.Redis, str]]:
    """The primary a Sentinel names for the service, and its replicas."""
    target = parse_sentinel_url(url)
    for host, port in target.hosts:
        try:
            with redis.Redis(host=host, port=port, socket_timeout=2, **target.tls) as sentinel:
                primary = sentinel.sentinel_get_master_addr_by_name(target.service)
                replicas = sentinel.sentinel_slaves(target.service)
        except redis.RedisError:
            continue  # the next Sentinel
        if not primary:
            continue
        addresses = [tuple(primary)] + [(r["ip"], int(r["port"])) for r in replicas
                                         if "s_down" not in r.get("flags", "")]
        return [(redis.Redis(host=h, port=p, username=target.username,
                             password=target.password, **target.tls), f"{h}:{p}")
                for h, p in addresses]
    raise redis.ConnectionError(f"no Sentinel of {url.rsplit('@', 1)[-1]} names a primary "
                                f"for {target.service}")

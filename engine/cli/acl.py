"""``inferis acl ROLE``: the ACL rules of a role, printed or applied."""

from __future__ import annotations

import argparse

import redis

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
                     help="run it on --redis (every node of a redis+cluster:// URL; ACLs "
                          "are not replicated, so apply it on every node of a replicated set)")
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
    if not is_cluster_url(url):
        return [(redis.Redis.from_url(url), url.rsplit("@", 1)[-1])]
    target = parse_cluster_url(url)
    cluster = redis.RedisCluster(host=target.hosts[0][0], port=target.hosts[0][1],
                                 username=target.username, password=target.password)
    return [(cluster.get_redis_connection(node), node.name) for node in cluster.get_nodes()]

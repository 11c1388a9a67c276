"""``inferis retention``: the bounds a deployment sets on what Redis keeps
(docs/PROTOCOL.md §17.2): dead letters per partition, a model's audit."""

from __future__ import annotations

import argparse

from inferis.client import ArgumentError, Client


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser("retention", parents=[common],
                         help="bound the dead letters of every partition, or a model's audit")
    cmd.add_argument("--redis", default="redis://localhost:6379")
    cmd.add_argument("--deadletter-maxlen", type=int, default=None, metavar="N",
                     help="keep about N dead letters per partition (0: the default, 10000)")
    cmd.add_argument("--model", default="", help="the model whose audit --audit-maxlen bounds")
    cmd.add_argument("--audit-maxlen", type=int, default=None, metavar="N",
                     help="keep about N entries of --model's audit (0: the default, 10000)")
    cmd.set_defaults(handler=cmd_retention)


def cmd_retention(ns: argparse.Namespace) -> int:
    if ns.deadletter_maxlen is None and ns.audit_maxlen is None:
        raise ArgumentError("give --deadletter-maxlen N, or --model NAME --audit-maxlen N")
    if ns.audit_maxlen is not None and not ns.model:
        raise ArgumentError("--audit-maxlen needs --model NAME")
    with Client(ns.redis) as client:
        if ns.deadletter_maxlen is not None:
            client.set_deadletter_maxlen(ns.deadletter_maxlen)
            partitions = ",".join(str(p) for p in client.partitions)
            print(f"deadletter_maxlen {ns.deadletter_maxlen} on partition(s) {partitions}")
        if ns.audit_maxlen is not None:
            client.set_audit_maxlen(ns.model, ns.audit_maxlen)
            print(f"audit_maxlen {ns.audit_maxlen} for model {ns.model}")
    return 0

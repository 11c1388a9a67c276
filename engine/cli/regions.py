"""``inferis regions``: the ordered regions of an Active-Active deployment
(docs/ACTIVE-ACTIVE.md). Set once, before any region stores a model; later it
may only grow at its end."""

from __future__ import annotations

import argparse

from inferis.client import Client


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser("regions", parents=[common],
                         help="show or name the regions of an Active-Active deployment")
    cmd.add_argument("--redis", default="redis://localhost:6379")
    cmd.add_argument("names", nargs="?", default="",
                     help="the regions in order, comma-separated (eu,us,ap); none: show them")
    cmd.set_defaults(handler=cmd_regions)


def cmd_regions(ns: argparse.Namespace) -> int:
    with Client(ns.redis) as client:
        if ns.names:
            names = client.set_regions([n.strip() for n in ns.names.split(",")])
        else:
            names = client.regions()
    if not names:
        print("no regions: a single-region deployment")
    for index, name in enumerate(names, start=1):
        print(f"{index:>2} {name}")
    return 0

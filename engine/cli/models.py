"""``inferis model store|list|get|export|del|stats|audit``; cache, quantize and the
lifecycle commands come from their own modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inferis.client import Client
from inferis.client import audit as A
from inferis.client.protocol.defaults import CHUNK_SIZE, GRAPH_OPTIMIZATION_LEVELS
from inferis.client.protocol.errors import ArgumentError

from ..backends.savedmodel import pack_saved_model
from ..models import optimize
from ..models.introspect import store_model
from . import cache, lifecycle, quantize


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    model = sub.add_parser("model", parents=[common], help="store, list, show and delete models")
    model.add_argument("--redis", default="redis://localhost:6379")
    model.add_argument("--region", default="", help="Active-Active: the region this Redis is "
                       "(its name in inferis:regions); stores and alias changes name it")
    model.set_defaults(handler=cmd_model)
    msub = model.add_subparsers(dest="model_command", required=True)
    store = msub.add_parser("store", parents=[common], help="store a model file as a new version")
    store.add_argument("name")
    store.add_argument("file", type=Path)
    store.add_argument("--backend", default="onnx")
    store.add_argument("--format", default="")
    store.add_argument("--device", default="CPU")
    store.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    store.add_argument("--input", action="append", default=[], metavar="NAME:DTYPE:SHAPE",
                       help="declare an input, e.g. X:float32:-1,4 (repeat in order)")
    store.add_argument("--output", action="append", default=[], metavar="NAME:DTYPE:SHAPE")
    store.add_argument("--meta", default="", help="extra metadata as a JSON object")
    store.add_argument("--batch", default="", metavar="MAX,DELAY_US[,PREFERRED...]",
                       help="dynamic batching, e.g. 64,500 or 64,500,16,32")
    store.add_argument("--sign", type=Path, default=None, metavar="KEY.pem",
                       help="sign the version with this ed25519 private key")
    store.add_argument("--encrypt", type=Path, default=None, metavar="KEY_FILE",
                       help="store it encrypted at rest with this 32-byte envelope key")
    store.add_argument("--by", default="", help="who stores it (after the ACL user, in the audit)")
    store.add_argument("--no-inspect", action="store_true",
                       help="do not load the model here to record its signature")
    store.add_argument("--cache-ttl-ms", type=int, default=None,
                       help="cache this version's answers in Redis for this long")
    store.add_argument("--cache-max-entries", type=int, default=None,
                       help="cached answers kept per partition (default 10000)")
    store.add_argument("--optimize", nargs="?", const=optimize.DEFAULT_LEVEL, default=None,
                       choices=optimize.OFFLINE_LEVELS, metavar="LEVEL",
                       help="store the graph optimized here, once (ONNX: basic, extended "
                            "(default), all; TorchScript: frozen, optimize_for_inference at "
                            "load)")
    store.add_argument("--graph-optimization", default=None,
                       choices=GRAPH_OPTIMIZATION_LEVELS,
                       help="the ONNX Runtime level workers load the version with "
                            "(default all; disabled after --optimize all)")
    msub.add_parser("list", parents=[common], help="list model names")
    get = msub.add_parser("get", parents=[common], help="show a version's metadata")
    get.add_argument("name")
    get.add_argument("--version")
    export = msub.add_parser("export", parents=[common],
                             help="write a version's file out, recorded as a read in the audit")
    export.add_argument("name")
    export.add_argument("--version")
    export.add_argument("--out", type=Path, required=True, help="file to write")
    export.add_argument("--decrypt", type=Path, default=None, metavar="KEY_FILE",
                        help="decrypt a version encrypted at rest with this envelope key")
    export.add_argument("--by", default="")
    delete = msub.add_parser(
        "del", parents=[common], help="delete one version or the whole model"
    )
    delete.add_argument("name")
    delete.add_argument("--version")
    delete.add_argument("--by", default="")
    audit = msub.add_parser("audit", parents=[common],
                            help="who stored, deleted, re-pointed, read or loaded it, newest first")
    audit.add_argument("name")
    audit.add_argument("--count", type=int, default=20)
    stats = msub.add_parser(
        "stats", parents=[common], help="requests, errors and mean times per model"
    )
    stats.add_argument("names", nargs="*", help="models (default: all)")
    route = msub.add_parser(
        "route", parents=[common],
        help="send a model's runs to a partition of its own, for a pool of its own",
    )
    route.add_argument("name")
    where = route.add_mutually_exclusive_group(required=True)
    where.add_argument("--partition", type=int, help="the partition its runs go to")
    where.add_argument("--clear", action="store_true",
                       help="back to the clients' own partitions")
    lifecycle.add_commands(msub, common)
    cache.add_commands(msub, common)
    quantize.add_commands(msub, common)


def _batch(text: str) -> tuple[int, int] | tuple[int, int, list[int]] | None:
    if not text:
        return None
    try:
        size, delay, *preferred = (int(v) for v in text.split(","))
    except ValueError:
        raise ArgumentError(f"--batch takes MAX,DELAY_US[,PREFERRED...], got {text!r}") from None
    return (size, delay, preferred) if preferred else (size, delay)


def _spec(text: str) -> dict[str, Any]:
    """``X:float32:-1,4`` -> a declared tensor spec (an empty shape is a scalar)."""
    try:
        name, dtype, shape = text.split(":")
        dims = [int(d) for d in shape.split(",") if d.strip()]
    except ValueError:
        raise ArgumentError(f"bad tensor spec {text!r}; expected NAME:DTYPE:SHAPE") from None
    return {"name": name, "dtype": dtype, "shape": dims}


def _meta(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"--meta must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ArgumentError("--meta must be a JSON object")
    return value


def _store(client: Client, ns: argparse.Namespace) -> None:
    bad_tags = [t for t in ns.tag if "=" not in t]
    if bad_tags:
        raise ArgumentError(f"--tag takes KEY=VALUE, got {bad_tags[0]!r}")
    options: dict[str, Any] = {
        "format": ns.format,
        "device": ns.device,
        "tags": dict(t.split("=", 1) for t in ns.tag),
        "batch": _batch(ns.batch),
        "inputs": [_spec(text) for text in ns.input],
        "outputs": [_spec(text) for text in ns.output],
        "extra": _meta(ns.meta),
        "cache_ttl_ms": ns.cache_ttl_ms,
        "cache_max_entries": ns.cache_max_entries,
    }
    if ns.sign is not None:
        options["signing_key"] = ns.sign
    if ns.encrypt is not None:
        options["encryption_key"] = ns.encrypt
    options["by"] = ns.by
    # A directory is a TensorFlow SavedModel: packed into one deterministic tar.
    blob = pack_saved_model(ns.file) if ns.file.is_dir() else ns.file.read_bytes()
    if ns.optimize is not None:
        optimized = optimize.optimize(ns.backend, ns.format, blob, ns.optimize)
        blob = optimized.blob  # what --meta says explicitly wins over the defaults
        options["extra"] = {**optimized.meta, **(options["extra"] or {})}
    if ns.graph_optimization is not None:
        options["extra"] = {**(options["extra"] or {}), "graph_optimization":
                            ns.graph_optimization}
    with _upload_progress(len(blob)) as progress:
        options["progress"] = progress
        if ns.no_inspect:
            stored = client.modelstore(ns.name, ns.backend, blob, **options)
        else:
            stored = store_model(client, ns.name, ns.backend, blob, **options)
    state = "stored" if stored.created else "already stored"
    encrypted = " encrypted" if ns.encrypt is not None else ""
    print(f"{stored.name} version {stored.version} {state}{encrypted} (sha256 {stored.digest})")


def _export(client: Client, ns: argparse.Namespace) -> None:
    info, data = client.modelexport(ns.name, ns.version, encryption_key=ns.decrypt, by=ns.by)
    ns.out.write_bytes(data)
    state = "encrypted, as stored" if info.encrypted and ns.decrypt is None else "plain"
    print(f"{info.label} written to {ns.out} ({len(data)} bytes, {state})")


def _audit(client: Client, name: str, count: int) -> None:
    for entry in client.audit(name, count):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(entry["ms"]) / 1000))
        print(f"{when}Z {A.describe(entry)}")


@contextlib.contextmanager
def _upload_progress(total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for uploads of more than one chunk, on a terminal."""
    if total <= CHUNK_SIZE or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("uploading", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("model", total=total)
        yield lambda sent, _total: bar.update(task, completed=sent)


def _stats(client: Client, names: list[str]) -> None:
    print(f"{'model':24} {'requests':>10} {'errors':>8} {'mean run':>10} {'mean wait':>10}")
    for name in names or client.modellist():
        s = client.modelstats(name)
        n = max(1, s.get("requests", 0))
        ok = max(1, s.get("requests", 0) - s.get("errors", 0))  # only runs have run time
        run_ms, wait_ms = s.get("run_us", 0) / ok / 1000, s.get("queue_us", 0) / n / 1000
        print(
            f"{name:24} {s.get('requests', 0):>10} {s.get('errors', 0):>8} "
            f"{run_ms:>8.3f}ms {wait_ms:>8.3f}ms"
        )


def cmd_model(ns: argparse.Namespace) -> int:
    with Client(ns.redis, region=ns.region) as client:
        if ns.model_command == "store":
            _store(client, ns)
        elif ns.model_command == "list":
            for name in client.modellist():
                print(name)
        elif ns.model_command == "get":
            print(json.dumps(client.modelget(ns.name, ns.version).as_dict(), indent=2))
        elif ns.model_command == "export":
            _export(client, ns)
        elif ns.model_command == "del":
            print(f"deleted {client.modeldel(ns.name, ns.version, by=ns.by)} version(s)")
        elif ns.model_command == "audit":
            _audit(client, ns.name, ns.count)
        elif ns.model_command == "stats":
            _stats(client, ns.names)
        elif ns.model_command == "route":
            client.set_model_partition(ns.name, None if ns.clear else ns.partition)
            print(f"{ns.name}: runs go to "
                  + ("the clients' own partitions" if ns.clear else f"partition {ns.partition}")
                  + (f"; serve it with: inferis worker --models {ns.name}"
                     if not ns.clear else ""))
        elif ns.model_command in lifecycle.COMMANDS:
            lifecycle.run(client, ns)
        elif ns.model_command in cache.COMMANDS:
            cache.run(client, ns)
        elif ns.model_command in quantize.COMMANDS:
            quantize.run(client, ns)
    return 0

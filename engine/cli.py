"""The ``inferis`` command: up, worker, demo, and model management."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from inferis.client import Client, InferisError
from inferis.client.connection import sync_connection

from .backends.base import BackendOptions
from .backends.savedmodel import pack_saved_model
from .embedded import EmbeddedRedis
from .introspect import store_model
from .library import ensure_library
from .supervisor import WorkerPool
from .worker import Worker, WorkerConfig

log = logging.getLogger("inferis")


def _add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partitions", default="0", help="comma-separated partitions to serve")
    p.add_argument("--device", default="CPU", help="device this worker serves (CPU, GPU:0)")
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--inter-op-threads", type=int, default=1)
    p.add_argument("--read-count", type=int, default=64, help="entries read per XREADGROUP")
    p.add_argument("--claim-idle-ms", type=int, default=30_000,
                   help="reclaim requests another worker left pending this long")
    p.add_argument("--max-deliveries", type=int, default=3,
                   help="dead-letter a request delivered more often than this")
    p.add_argument("--max-models", type=int, default=32, help="loaded models kept in memory")
    p.add_argument("--trust-unsafe-formats", action="store_true",
                   help="allow model formats that run code on load (pickle)")
    p.add_argument("--isolate-backends", action="store_true",
                   help="run models in a child process, so a run past its timeout is cut off")
    p.add_argument("--run-timeout-ms", type=int, default=30_000,
                   help="with --isolate-backends: a run's execution timeout unless the model's "
                        "META timeout_ms says otherwise")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, e.g. skops_trusted=pkg.Class,pkg.func (repeatable)")
    p.add_argument("--metrics-addr", default="127.0.0.1",
                   help="address the /metrics endpoint listens on")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus /metrics on this port (0: off); with up/demo, "
                        "worker i uses port + i")


def _worker_args(ns: argparse.Namespace) -> list[str]:
    """The worker options of ``up``/``demo``, passed on to each worker process."""
    args = [
        "--partitions", ns.partitions, "--device", ns.device,
        "--intra-op-threads", str(ns.intra_op_threads),
        "--inter-op-threads", str(ns.inter_op_threads),
        "--read-count", str(ns.read_count), "--claim-idle-ms", str(ns.claim_idle_ms),
        "--max-deliveries", str(ns.max_deliveries), "--max-models", str(ns.max_models),
        "--log-level", ns.log_level,
    ]
    if ns.trust_unsafe_formats:
        args.append("--trust-unsafe-formats")
    for option in ns.backend_option:
        args += ["--backend-option", option]
    args += ["--metrics-addr", ns.metrics_addr, "--run-timeout-ms", str(ns.run_timeout_ms)]
    if ns.isolate_backends:
        args.append("--isolate-backends")
    return args


def _backend_options(pairs: Sequence[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise SystemExit(f"--backend-option takes KEY=VALUE, got {bad[0]!r}")
    return dict(p.split("=", 1) for p in pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferis", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", parents=[common], help="start Redis (unless --redis) and workers; Ctrl-C stops all"
    )
    up.add_argument("--redis", help="use this Redis instead of starting a private one")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument(
        "--data-dir", default="inferis-data", help="where the private Redis keeps its AOF"
    )
    up.add_argument("--port", type=int, default=0, help="port for the private Redis (0: any free)")
    up.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    _add_worker_options(up)

    worker = sub.add_parser("worker", parents=[common], help="run one worker process")
    worker.add_argument("--redis", default="redis://localhost:6379")
    worker.add_argument("--consumer", default="", help="consumer name (default: host-pid-random)")
    _add_worker_options(worker)

    demo = sub.add_parser(
        "demo", parents=[common], help="serve a scikit-learn model end to end and print results"
    )
    demo.add_argument("--redis", help="use this Redis instead of starting a private one")
    demo.add_argument("--workers", type=int, default=2)
    _add_worker_options(demo)

    lib = sub.add_parser(
        "load-library", parents=[common], help="load the Functions library into a Redis"
    )
    lib.add_argument("--redis", default="redis://localhost:6379")

    model = sub.add_parser("model", parents=[common], help="store, list, show and delete models")
    model.add_argument("--redis", default="redis://localhost:6379")
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
    store.add_argument("--no-inspect", action="store_true",
                       help="do not load the model here to record its signature")
    msub.add_parser("list", parents=[common], help="list model names")
    get = msub.add_parser("get", parents=[common], help="show a version's metadata")
    get.add_argument("name")
    get.add_argument("--version")
    delete = msub.add_parser(
        "del", parents=[common], help="delete one version or the whole model"
    )
    delete.add_argument("name")
    delete.add_argument("--version")
    stats = msub.add_parser(
        "stats", parents=[common], help="requests, errors and mean times per model"
    )
    stats.add_argument("names", nargs="*", help="models (default: all)")
    return parser


def _serve_forever(pool: WorkerPool) -> None:
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop:
        pool.watch()
        time.sleep(0.5)


@contextlib.contextmanager
def running(
    redis_url: str | None,
    workers: int,
    worker_args: Sequence[str],
    data_dir: Path,
    port: int = 0,
    appendfsync: str = "everysec",
    metrics_base_port: int = 0,
) -> Iterator[tuple[str, WorkerPool]]:
    """Redis (private unless a URL is given) plus workers; everything stops on exit."""
    server = None
    if redis_url is None:
        server = EmbeddedRedis(data_dir, port=port or None, appendfsync=appendfsync)
        redis_url = server.start()
    pool = WorkerPool(redis_url, workers, worker_args, metrics_base_port)
    try:
        conn = sync_connection(redis_url)
        ensure_library(conn)
        conn.close()
        pool.start()
        yield redis_url, pool
    finally:
        pool.stop()
        if server is not None:
            server.stop()


def cmd_up(ns: argparse.Namespace) -> int:
    with running(
        ns.redis, ns.workers, _worker_args(ns), Path(ns.data_dir), ns.port, ns.appendfsync,
        ns.metrics_port,
    ) as (url, pool):
        print(f"inferis is up: {url} ({ns.workers} workers). Ctrl-C stops it.", flush=True)
        _serve_forever(pool)
    print("inferis stopped.", flush=True)
    return 0


def cmd_worker(ns: argparse.Namespace) -> int:
    config = WorkerConfig(
        redis_url=ns.redis,
        partitions=[int(p) for p in ns.partitions.split(",") if p.strip()],
        consumer=ns.consumer,
        read_count=ns.read_count,
        claim_idle_ms=ns.claim_idle_ms,
        max_deliveries=ns.max_deliveries,
        max_models=ns.max_models,
        metrics_port=ns.metrics_port,
        metrics_addr=ns.metrics_addr,
        isolate_backends=ns.isolate_backends,
        run_timeout_ms=ns.run_timeout_ms,
        backend=BackendOptions(
            device=ns.device,
            intra_op_threads=ns.intra_op_threads,
            inter_op_threads=ns.inter_op_threads,
            trust_unsafe_formats=ns.trust_unsafe_formats,
            extra=_backend_options(ns.backend_option),
        ),
    )
    Worker(config).run()
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    with tempfile.TemporaryDirectory(prefix="inferis-demo-") as tmp, running(
        ns.redis, ns.workers, _worker_args(ns), Path(tmp), metrics_base_port=ns.metrics_port
    ) as (url, _):
        print(f"inferis is up: {url} ({ns.workers} workers)", flush=True)
        run_demo(url)
    return 0


def _batch(text: str) -> tuple[int, int] | tuple[int, int, list[int]] | None:
    if not text:
        return None
    try:
        size, delay, *preferred = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--batch takes MAX,DELAY_US[,PREFERRED...], got {text!r}") from None
    return (size, delay, preferred) if preferred else (size, delay)


def _spec(text: str) -> dict[str, Any]:
    """``X:float32:-1,4`` -> a declared tensor spec (an empty shape is a scalar)."""
    try:
        name, dtype, shape = text.split(":")
        dims = [int(d) for d in shape.split(",") if d.strip()]
    except ValueError:
        raise SystemExit(f"bad tensor spec {text!r}; expected NAME:DTYPE:SHAPE") from None
    return {"name": name, "dtype": dtype, "shape": dims}


def cmd_model(ns: argparse.Namespace) -> int:
    with Client(ns.redis) as client:
        if ns.model_command == "store":
            bad_tags = [t for t in ns.tag if "=" not in t]
            if bad_tags:
                raise SystemExit(f"--tag takes KEY=VALUE, got {bad_tags[0]!r}")
            options: dict[str, Any] = {
                "format": ns.format,
                "device": ns.device,
                "tags": dict(t.split("=", 1) for t in ns.tag),
                "batch": _batch(ns.batch),
                "inputs": [_spec(text) for text in ns.input],
                "outputs": [_spec(text) for text in ns.output],
                "extra": json.loads(ns.meta) if ns.meta else None,
            }
            # A directory is a TensorFlow SavedModel: packed into one deterministic tar.
            try:
                blob = pack_saved_model(ns.file) if ns.file.is_dir() else ns.file.read_bytes()
            except (OSError, ValueError) as exc:
                raise SystemExit(f"error: cannot read {ns.file}: {exc}") from None
            if ns.no_inspect:
                stored = client.modelstore(ns.name, ns.backend, blob, **options)
            else:
                stored = store_model(client, ns.name, ns.backend, blob, **options)
            state = "stored" if stored.created else "already stored"
            print(f"{stored.name} version {stored.version} {state} (sha256 {stored.digest})")
        elif ns.model_command == "list":
            for name in client.modellist():
                print(name)
        elif ns.model_command == "get":
            info = client.modelget(ns.name, ns.version)
            print(json.dumps(asdict(info), indent=2))  # type: ignore[arg-type]
        elif ns.model_command == "del":
            print(f"deleted {client.modeldel(ns.name, ns.version)} version(s)")
        elif ns.model_command == "stats":
            print(f"{'model':24} {'requests':>10} {'errors':>8} {'mean run':>10} {'mean wait':>10}")
            for name in ns.names or client.modellist():
                s = client.modelstats(name)
                n = max(1, s.get("requests", 0))
                ok = max(1, s.get("requests", 0) - s.get("errors", 0))  # only runs have run time
                run_ms, wait_ms = s.get("run_us", 0) / ok / 1000, s.get("queue_us", 0) / n / 1000
                print(
                    f"{name:24} {s.get('requests', 0):>10} {s.get('errors', 0):>8} "
                    f"{run_ms:>8.3f}ms {wait_ms:>8.3f}ms"
                )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(ns.log_level).upper(), logging.INFO),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    if ns.command == "load-library":
        loaded = ensure_library(sync_connection(ns.redis))
        print("library loaded" if loaded else "library already current")
        return 0
    handlers = {"up": cmd_up, "worker": cmd_worker, "demo": cmd_demo, "model": cmd_model}
    try:
        return handlers[ns.command](ns)
    except InferisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

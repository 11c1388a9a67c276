"""``inferis up``, ``inferis worker``, ``inferis demo``: start things and keep them running."""

from __future__ import annotations

import argparse
import contextlib
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from inferis.client.connection import sync_connection
from inferis.client.protocol.keys import model_key
from inferis.lua import ensure_library

from ..config import ConfigError, WorkerConfig, add_worker_arguments, worker_argv
from ..local.autoscale import Autoscaler, Policy, parse_range
from ..local.cluster import LocalCluster
from ..local.embedded import EmbeddedRedis, data_dir_password
from ..local.supervisor import WorkerPool
from ..local.tls import make_certificates
from ..serving.worker import Worker


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    up = sub.add_parser(
        "up", parents=[common], help="start Redis (unless --redis) and workers; Ctrl-C stops all"
    )
    up.add_argument("--redis", help="use this Redis instead of starting a private one")
    up.add_argument("--workers", default="2", metavar="N|MIN:MAX",
                    help="worker processes; MIN:MAX grows and shrinks them with the queue")
    _add_scaling_arguments(up)
    up.add_argument(
        "--data-dir", default="inferis-data", help="where the private Redis keeps its AOF"
    )
    up.add_argument("--port", type=int, default=0, help="port for the private Redis (0: any free)")
    up.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    up.add_argument("--cluster", type=int, default=0, metavar="N",
                    help="start a local Redis Cluster of N primaries (a fresh one each "
                         "time) instead of one Redis, --workers workers beside each primary")
    up.add_argument("--replicas", type=int, default=1, metavar="R",
                    help="replicas per primary with --cluster")
    up.add_argument("--tls", action="store_true",
                    help="TLS only (the plain port off; with --cluster the cluster bus and "
                         "replication too): a local CA and certificates are made in "
                         "<data-dir>/tls and the printed rediss:// (rediss+cluster://) URL "
                         "trusts them")
    up.add_argument("--mutual-tls", action="store_true",
                    help="with --tls, clients must show a certificate of that CA too")
    up.add_argument("--no-password", action="store_true",
                    help="start the private Redis without a password (default: one is made "
                         "and kept in the data directory)")
    add_worker_arguments(up)
    up.set_defaults(handler=cmd_up)

    scale = sub.add_parser(
        "autoscale", parents=[common],
        help="run MIN to MAX workers for a Redis started elsewhere, following its queue",
    )
    scale.add_argument("--redis", default="redis://localhost:6379")
    scale.add_argument("--workers", default="1:4", metavar="MIN:MAX")
    _add_scaling_arguments(scale)
    add_worker_arguments(scale)
    scale.set_defaults(handler=cmd_autoscale)

    worker = sub.add_parser("worker", parents=[common], help="run one worker process")
    worker.add_argument("--redis", default="redis://localhost:6379")
    worker.add_argument("--consumer", default="", help="consumer name (default: host-pid-random)")
    add_worker_arguments(worker)
    worker.set_defaults(handler=cmd_worker)

    demo = sub.add_parser(
        "demo", parents=[common], help="serve a scikit-learn model end to end and print results"
    )
    demo.add_argument("--redis", help="use this Redis instead of starting a private one")
    demo.add_argument("--workers", type=int, default=2)
    add_worker_arguments(demo)
    demo.set_defaults(handler=cmd_demo)

    gateway = sub.add_parser(
        "gateway", parents=[common],
        help="serve the Open Inference Protocol V2 REST API (Triton/KServe clients) over Redis")
    gateway.add_argument("--redis", default="redis://localhost:6379")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8000)
    gateway.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    gateway.set_defaults(handler=cmd_gateway)

    lib = sub.add_parser(
        "load-library", parents=[common], help="load the Functions library into a Redis"
    )
    lib.add_argument("--redis", default="redis://localhost:6379")
    lib.set_defaults(handler=cmd_load_library)


def _add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Policy(1, 1)
    parser.add_argument("--scale-target", type=int, default=defaults.target_per_worker,
                        metavar="N", help="with MIN:MAX: requests queued per worker beyond "
                        "which one more starts")
    parser.add_argument("--scale-wait-ms", type=float, default=defaults.target_wait_ms,
                        help="with MIN:MAX: a request unread this long starts one more")
    parser.add_argument("--scale-cooldown-s", type=float, default=defaults.cooldown_s,
                        help="with MIN:MAX: how long the load must stay low before one goes")


def _policy(ns: argparse.Namespace) -> Policy:
    try:
        low, high = parse_range(str(ns.workers))
        return Policy(low, high, ns.scale_target, ns.scale_wait_ms, ns.scale_cooldown_s)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _autoscalers(
    policy: Policy, pools: Sequence[WorkerPool], ns: argparse.Namespace
) -> list[Autoscaler]:
    if policy.min_workers == policy.max_workers:
        return []
    scalers = []
    for pool in pools:
        conn = sync_connection(pool.redis_url)
        scalers.append(Autoscaler(pool, conn, policy, _watched_partitions(ns, conn),
                                  region=ns.region))
    return scalers


def _watched_partitions(ns: argparse.Namespace, conn: Any) -> list[int]:
    """The partitions whose queue the pool follows: those its workers serve."""
    if ns.models:
        routed = [conn.get(model_key(name.strip(), "partition"))
                  for name in ns.models.split(",") if name.strip()]
        found = sorted({int(v) for v in routed if v is not None and v.isdigit()})
        if not found:
            raise ConfigError(f"--models {ns.models}: none of them is routed to a partition "
                              "(inferis model route NAME --partition N)")
        return found
    if ns.partitions.strip().lower() in ("auto", "all"):
        return [0]
    try:
        return sorted({int(p) for p in ns.partitions.split(",") if p.strip()})
    except ValueError:
        raise ConfigError(f"--partitions takes auto, all or numbers like 0,1, got "
                          f"{ns.partitions!r}") from None


def _child_argv(ns: argparse.Namespace) -> list[str]:
    """What each worker process of ``up``/``demo`` is started with."""
    return [*worker_argv(WorkerConfig.from_args(ns)), "--log-level", ns.log_level]


def _serve_forever(pools: Sequence[WorkerPool], autoscalers: Sequence[Autoscaler] = ()) -> None:
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for autoscaler in autoscalers:
        autoscaler.start()
    try:
        while not stop:
            for pool in pools:
                pool.watch()
            time.sleep(0.5)
    finally:
        for autoscaler in autoscalers:
            autoscaler.stop()


@contextlib.contextmanager
def running(
    redis_url: str | None,
    workers: int,
    worker_args: Sequence[str],
    data_dir: Path,
    port: int = 0,
    appendfsync: str = "everysec",
    metrics_base_port: int = 0,
    password: bool = True,
    tls: bool = False,
    mutual_tls: bool = False,
) -> Iterator[tuple[str, list[WorkerPool]]]:
    """Redis (private unless a URL is given) plus workers; everything stops on exit.
    The private Redis has a password unless ``password`` is False, and speaks only
    TLS with ``tls`` (certificates made once in ``<data_dir>/tls``)."""
    server = None
    if redis_url is None:
        server = EmbeddedRedis(
            data_dir, port=port or None, appendfsync=appendfsync,
            password=data_dir_password(data_dir) if password else None,
            tls=make_certificates(Path(data_dir) / "tls") if tls else None,
            mutual_tls=mutual_tls,
        )
        redis_url = server.start()
    pool = WorkerPool(redis_url, workers, worker_args, metrics_base_port)
    try:
        conn = sync_connection(redis_url)
        ensure_library(conn)
        conn.close()
        pool.start()
        yield redis_url, [pool]
    finally:
        pool.stop()
        if server is not None:
            server.stop()


@contextlib.contextmanager
def running_cluster(
    primaries: int,
    replicas: int,
    workers: int,
    worker_args: Sequence[str],
    data_dir: Path,
    appendfsync: str = "everysec",
    metrics_base_port: int = 0,
    password: bool = True,
    tls: bool = False,
    mutual_tls: bool = False,
) -> Iterator[tuple[str, list[WorkerPool]]]:
    """A local Redis Cluster with ``workers`` workers beside each primary (each
    serves the partitions its primary holds); everything stops on exit. With
    ``tls`` every node speaks only TLS (certificates as for :func:`running`)."""
    cluster = LocalCluster(
        data_dir, primaries, replicas, appendfsync=appendfsync,
        password=data_dir_password(data_dir) if password else None,
        tls=make_certificates(Path(data_dir) / "tls") if tls else None,
        mutual_tls=mutual_tls,
    )
    pools: list[WorkerPool] = []
    try:
        cluster.start()
        for index, primary in enumerate(cluster.primary_ports()):
            metrics = metrics_base_port + index * workers if metrics_base_port else 0
            pool = WorkerPool(cluster.url_beside(primary), workers, worker_args, metrics)
            pool.start()
            pools.append(pool)
        yield cluster.url, pools
    finally:
        for pool in pools:
            pool.stop()
        cluster.stop()


def cmd_up(ns: argparse.Namespace) -> int:
    if ns.mutual_tls and not ns.tls:
        raise ConfigError("--mutual-tls goes with --tls")
    policy = _policy(ns)
    ns.workers = policy.min_workers
    if ns.cluster and policy.max_workers != policy.min_workers:
        raise ConfigError("--workers MIN:MAX with --cluster is not supported: give a number "
                          "(each shard's workers are fixed), or scale on the queue metrics "
                          "with an orchestrator (README, Scaling)")
    if ns.cluster:
        if ns.redis:
            raise ConfigError("--cluster starts its own Redis Cluster: leave out --redis")
        if ns.cluster < 1 or ns.replicas < 0:
            raise ConfigError("--cluster takes at least 1 primary, --replicas at least 0")
        started = running_cluster(
            ns.cluster, ns.replicas, ns.workers, _child_argv(ns), Path(ns.data_dir),
            ns.appendfsync, ns.metrics_port, password=not ns.no_password, tls=ns.tls,
            mutual_tls=ns.mutual_tls,
        )
        shape = f"{ns.cluster} primaries x {ns.replicas} replicas, {ns.workers} workers each"
    else:
        if ns.tls and ns.redis:
            raise ConfigError("--tls sets up the private Redis: give your own as a rediss:// "
                              "--redis URL instead")
        started = running(
            ns.redis, ns.workers, _child_argv(ns), Path(ns.data_dir), ns.port, ns.appendfsync,
            ns.metrics_port, password=not ns.no_password, tls=ns.tls, mutual_tls=ns.mutual_tls,
        )
        shape = (f"{ns.workers} workers" if policy.max_workers == policy.min_workers
                 else f"{policy.min_workers} to {policy.max_workers} workers, following the queue")
    with started as (url, pools):
        print(f"inferis is up: {url} ({shape}). Ctrl-C stops it.", flush=True)
        _serve_forever(pools, _autoscalers(policy, pools, ns))
    print("inferis stopped.", flush=True)
    return 0


def cmd_autoscale(ns: argparse.Namespace) -> int:
    policy = _policy(ns)
    conn = sync_connection(ns.redis)
    ensure_library(conn)
    conn.close()
    pool = WorkerPool(ns.redis, policy.min_workers, _child_argv(ns), ns.metrics_port)
    pool.start()
    try:
        print(f"inferis autoscale: {policy.min_workers} to {policy.max_workers} workers on "
              f"{ns.redis.rsplit('@', 1)[-1]}. Ctrl-C stops them.", flush=True)
        _serve_forever([pool], _autoscalers(policy, [pool], ns))
    finally:
        pool.stop()
    print("inferis autoscale stopped.", flush=True)
    return 0


def cmd_worker(ns: argparse.Namespace) -> int:
    Worker(WorkerConfig.from_args(ns, redis_url=ns.redis, consumer=ns.consumer)).run()
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    with tempfile.TemporaryDirectory(prefix="inferis-demo-") as tmp, running(
        ns.redis, ns.workers, _child_argv(ns), Path(tmp), metrics_base_port=ns.metrics_port
    ) as (url, _):
        print(f"inferis is up: {url} ({ns.workers} workers)", flush=True)
        run_demo(url)
    return 0


def cmd_gateway(ns: argparse.Namespace) -> int:
    try:
        from ..gateway.app import serve
    except ImportError as exc:
        raise ConfigError(f"the gateway needs the gateway extra (pip install "
                          f"'inferis[gateway]'): {exc}") from None
    serve(ns.redis, ns.host, ns.port, ns.workers)
    return 0


def cmd_load_library(ns: argparse.Namespace) -> int:
    loaded = ensure_library(sync_connection(ns.redis))
    print("library loaded" if loaded else "library already current")
    return 0

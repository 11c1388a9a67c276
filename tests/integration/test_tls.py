"""TLS end to end with the plain port off: the SDK (sync and asyncio), workers, the
CLI and the gateway over rediss://, and mutual TLS refusing a client without a
certificate of the CA; the same through Sentinel (rediss+sentinel://, across a
failover) and a Redis Cluster (rediss+cluster://, ``inferis up --cluster --tls``),
where replication, Sentinel's links and the cluster bus are TLS too."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from inferis.client import AsyncClient, Client, ConnectionLostError
from inferis.engine.local.embedded import EmbeddedRedis, free_port
from inferis.engine.local.supervisor import WorkerPool
from inferis.engine.local.tls import make_certificates
from inferis.lua import ensure_library

from ..models import IrisModel
from ..topology import ClusterStack, Sentinels, replica_of, wait_for_link

INFERIS = [sys.executable, "-m", "inferis.engine"]


def infer_over_gateway(url: str, iris: IrisModel) -> dict:
    port = free_port()
    gateway = subprocess.Popen([*INFERIS, "gateway", "--redis", url, "--port", str(port),
                                "--log-level", "WARNING"])
    body = json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                   "data": iris.features[0].tolist()}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/iris/infer", body,
                                     {"content-type": "application/json"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                return json.loads(urllib.request.urlopen(request, timeout=10).read())
            except OSError:
                assert gateway.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        gateway.terminate()
        gateway.wait(20)


@pytest.mark.parametrize("mutual", [False, True])
def test_everything_speaks_tls_with_the_plain_port_off(
    tmp_path: Path, iris: IrisModel, mutual: bool
) -> None:
    tls = make_certificates(tmp_path / "tls")
    server = EmbeddedRedis(tmp_path / "redis", tls=tls, mutual_tls=mutual, password="pw")
    server.start()
    pool = None
    try:
        url = server.url
        assert url.startswith("rediss://")
        with pytest.raises(redis.ConnectionError):  # no plain TCP Redis there
            redis.Redis(port=server.port, password="pw", socket_connect_timeout=1).ping()
        if mutual:  # TLS without a client certificate is refused
            with pytest.raises(redis.ConnectionError):
                redis.Redis(port=server.port, password="pw", ssl=True, ssl_ca_certs=str(tls.ca),
                            socket_connect_timeout=2).ping()
        ensure_library(redis.Redis.from_url(url))
        pool = WorkerPool(url, 1, ["--log-level", "WARNING"])
        pool.start()
        with Client(url, timeout_ms=30_000) as client:
            client.modelstore("iris", "onnx", iris.blob)
            out = client.predict("iris", {"X": iris.features[:3]})
            np.testing.assert_array_equal(out["label"], iris.forest.predict(iris.features[:3]))

        async def many() -> list:
            async with AsyncClient(url, timeout_ms=30_000) as aclient:
                return await asyncio.gather(*(
                    aclient.predict("iris", {"X": iris.features[i : i + 1]}) for i in range(20)))

        assert len(asyncio.run(many())) == 20
        listed = subprocess.run([*INFERIS, "model", "--redis", url, "list"],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and listed.stdout.split() == ["iris"], listed.stderr
        answer = infer_over_gateway(url, iris)
        assert answer["outputs"][0]["name"] == "label"
    finally:
        if pool is not None:
            pool.stop()
        server.stop()


def test_up_tls_makes_certificates_and_serves_over_tls(tmp_path: Path, iris: IrisModel) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen([*INFERIS, "up", "--tls", "--mutual-tls", "--workers", "1",
                             "--data-dir", str(data), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"inferis is up: (rediss://\S+)", line)
        assert match, line
        url = match.group(1)
        assert "ssl_certfile=" in url and (data / "tls" / "ca.pem").exists()
        assert (data / "tls" / "redis.key").stat().st_mode & 0o077 == 0
        with Client(url, timeout_ms=30_000) as client:
            client.modelstore("iris", "onnx", iris.blob)
            assert client.predict("iris", {"X": iris.features[:1]})["label"].shape == (1,)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    bad = subprocess.run([*INFERIS, "up", "--mutual-tls", "--data-dir", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: EARGS")


def refuses_plain(port: int) -> bool:
    """Nothing speaks plain Redis on ``port`` (the TLS port; the plain one is 0)."""
    try:
        redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1,
                    retry=Retry(NoBackoff(), 0)).ping()
    except (redis.ConnectionError, redis.TimeoutError):
        return True
    return False


def predicts_everywhere(url: str, iris: IrisModel) -> None:
    """Runs over every partition (so every shard of a cluster), sync and asyncio."""
    with Client(url, timeout_ms=30_000) as client:
        for i in range(0, 40, 4):
            out = client.predict("iris", {"X": iris.features[i : i + 4]})
            np.testing.assert_array_equal(out["label"],
                                          iris.forest.predict(iris.features[i : i + 4]))

    async def many() -> list:
        async with AsyncClient(url, timeout_ms=30_000) as aclient:
            return await asyncio.gather(*(
                aclient.predict("iris", {"X": iris.features[i : i + 1]}) for i in range(20)))

    assert len(asyncio.run(many())) == 20


def without_tls_options(url: str) -> str:
    return url.partition("?")[0]


def test_sentinel_over_mutual_tls_serves_and_follows_a_failover(
    tmp_path: Path, iris: IrisModel
) -> None:
    tls = make_certificates(tmp_path / "tls")
    primary = EmbeddedRedis(tmp_path / "primary", appendfsync="always", password="pw",
                            tls=tls, mutual_tls=True)
    primary.start()
    replica = replica_of(primary, tmp_path / "replica")  # replicates over TLS, with a cert
    replica.start()
    sentinels = Sentinels(tmp_path / "sentinels", primary.port, password="pw", tls=tls,
                          mutual_tls=True)
    pool = None
    try:
        wait_for_link(replica)
        sentinels.start()
        assert all(refuses_plain(p) for p in [primary.port, replica.port, *sentinels.ports])
        url = sentinels.url
        assert url.startswith("rediss+sentinel://:pw@") and "ssl_certfile=" in url
        ensure_library(primary.client())
        pool = WorkerPool(url, 1, ["--log-level", "WARNING"])
        pool.start()
        with Client(url, wait_replicas=1, timeout_ms=30_000) as client:
            client.modelstore("iris", "onnx", iris.blob)  # on the replica too, before the kill
        predicts_everywhere(url, iris)

        # a client without the CA, and one with the CA but no certificate: refused
        with Client(without_tls_options(url), reconnect_window_s=0.5) as client, \
                pytest.raises(ConnectionLostError, match="certificate verify failed"):
            client.modellist()
        no_cert = url.partition("&ssl_certfile")[0]
        with Client(no_cert, reconnect_window_s=0.5) as client, \
                pytest.raises(ConnectionLostError):
            client.modellist()

        async def untrusted() -> None:
            async with AsyncClient(without_tls_options(url), reconnect_window_s=0.5) as aclient:
                await aclient.modellist()

        with pytest.raises(ConnectionLostError, match="certificate verify failed"):
            asyncio.run(untrusted())

        old = primary.port
        primary.kill()
        assert sentinels.wait_for_failover(old) == replica.port
        predicts_everywhere(url, iris)  # client and worker found the new primary over TLS
        assert all(p.poll() is None for p in pool.processes)
    finally:
        if pool is not None:
            pool.stop()
        sentinels.stop()
        primary.stop()
        replica.stop()


def test_cluster_of_two_primaries_over_tls(tmp_path: Path, iris: IrisModel) -> None:
    tls = make_certificates(tmp_path / "tls")
    stack = ClusterStack(tmp_path / "cluster", primaries=2, replicas=1,
                         appendfsync="everysec", password="pw", tls=tls)
    try:
        stack.start()
        ports = [n.port for n in stack.cluster.nodes]
        assert all(refuses_plain(p) for p in ports)
        assert all(stack.cluster.client(p).config_get("port") == {"port": "0"} for p in ports)
        assert len(stack.cluster.primary_ports()) == 2
        url = stack.url
        assert url.startswith("rediss+cluster://:pw@") and "ssl_ca_certs=" in url
        with Client(url, timeout_ms=30_000) as client:
            client.modelstore("iris", "onnx", iris.blob)
        predicts_everywhere(url, iris)

        with pytest.raises(ConnectionLostError, match="certificate verify failed"):
            Client(without_tls_options(url))

        async def untrusted() -> None:
            async with AsyncClient(without_tls_options(url), reconnect_window_s=0.5) as aclient:
                await aclient.predict("iris", {"X": iris.features[:1]})

        with pytest.raises(ConnectionLostError, match="certificate verify failed"):
            asyncio.run(untrusted())
        assert stack.workers_alive()
    finally:
        stack.stop()


def test_up_cluster_with_mutual_tls(tmp_path: Path, iris: IrisModel) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen([*INFERIS, "up", "--cluster", "2", "--replicas", "0", "--tls",
                             "--mutual-tls", "--workers", "1", "--data-dir", str(data),
                             "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"inferis is up: (rediss\+cluster://:[^@]+@([^?]+)\?\S+)", line)
        assert match, line
        url = match.group(1)
        ports = [int(h.rsplit(":", 1)[1]) for h in match.group(2).split(",")]
        assert len(ports) == 2 and all(refuses_plain(p) for p in ports)
        assert "ssl_certfile=" in url
        with Client(url, timeout_ms=30_000) as client:
            client.modelstore("iris", "onnx", iris.blob)
        predicts_everywhere(url, iris)
        with pytest.raises(ConnectionLostError):  # the CA, but no client certificate
            Client(url.partition("&ssl_certfile")[0])
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0


def test_tls_urls_of_sentinel_and_cluster() -> None:
    from inferis.client import ArgumentError
    from inferis.client.connection import parse_sentinel_url
    from inferis.client.routing import parse_cluster_url

    target = parse_sentinel_url("rediss+sentinel://:pw@h1:1,h2:2/svc/3?ssl_ca_certs=%2Fca.pem"
                                "&ssl_check_hostname=no")
    assert target.hosts == [("h1", 1), ("h2", 2)] and (target.service, target.db) == ("svc", 3)
    assert target.tls == {"ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_check_hostname": False}
    assert parse_sentinel_url("redis+sentinel://h:1/svc").tls == {}
    cluster = parse_cluster_url("rediss+cluster://u:pw@h:1?ssl_certfile=c&ssl_keyfile=k")
    assert cluster.tls == {"ssl": True, "ssl_certfile": "c", "ssl_keyfile": "k"}
    assert cluster.password == "pw"
    with pytest.raises(ArgumentError, match="need a TLS scheme"):
        parse_cluster_url("redis+cluster://h:1?ssl_ca_certs=ca.pem")
    with pytest.raises(ArgumentError, match="unknown URL option 'ssl_ca_cert'"):
        parse_sentinel_url("rediss+sentinel://h:1/svc?ssl_ca_cert=ca.pem")

"""TLS end to end with the plain port off: the SDK (sync and asyncio), workers, the
CLI and the gateway over rediss://, and mutual TLS refusing a client without a
certificate of the CA."""

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

from inferis.client import AsyncClient, Client
from inferis.engine.local.embedded import EmbeddedRedis, free_port
from inferis.engine.local.supervisor import WorkerPool
from inferis.engine.local.tls import make_certificates
from inferis.lua import ensure_library

from ..models import IrisModel

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

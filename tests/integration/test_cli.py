"""The ``inferis`` command: up (embedded Redis + workers), model management."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from inferis.client import Client

from ..conftest import consumer_names, wait_for_consumers

INFERIS = [sys.executable, "-m", "inferis.engine"]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_up_serves_and_stops_cleanly(tmp_path: Path, iris) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [*INFERIS, "up", "--data-dir", str(data), "--workers", "2", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(
            r"inferis is up: (redis://:([^@]+)@127\.0\.0\.1:(\d+)) \(2 workers\)", line
        )
        assert match, line
        url, port = match.group(1), int(match.group(3))
        with pytest.raises(redis.AuthenticationError):  # the private Redis has a password
            redis.Redis(port=port).ping()
        assert (data / "password").read_text().strip() == match.group(2)
        assert (data / "password").stat().st_mode & 0o077 == 0
        conn = redis.Redis.from_url(url)
        with Client(url) as client:
            wait_for_consumers(conn, set(), 2)
            assert len(consumer_names(conn)) == 2
            client.modelstore("iris", "onnx", iris.blob)
            out = client.predict("iris", {"X": iris.features[:4]})
            assert np.array_equal(out["label"], iris.forest.predict(iris.features[:4]))
            assert conn.config_get("appendonly")["appendonly"] == "yes"
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    assert "inferis stopped." in proc.stdout.read()
    assert not _port_open(port)
    assert list((data / "appendonlydir").glob("*.aof"))  # the data survives in the AOF


def test_up_cluster_starts_a_cluster_with_workers_beside_each_primary(
    tmp_path: Path, iris
) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [*INFERIS, "up", "--cluster", "3", "--replicas", "0", "--workers", "1",
         "--data-dir", str(data), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True,
    )
    ports: list[int] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"inferis is up: (redis\+cluster://:[^@]+@(\S+)) "
                          r"\(3 primaries x 0 replicas, 1 workers each\)", line)
        assert match, line
        url = match.group(1)
        ports = [int(h.rsplit(":", 1)[1]) for h in match.group(2).split(",")]
        assert len(ports) == 3
        with Client(url, timeout_ms=20_000) as client:
            client.modelstore("iris", "onnx", iris.blob)
            for i in range(0, 40, 4):  # spread over the partitions, so over the shards
                out = client.predict("iris", {"X": iris.features[i : i + 4]})
                expected = iris.forest.predict(iris.features[i : i + 4])
                assert np.array_equal(out["label"], expected)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    assert ports and not any(_port_open(p) for p in ports)


def test_up_cluster_refuses_a_redis_url(tmp_path: Path) -> None:
    done = subprocess.run(
        [*INFERIS, "up", "--cluster", "3", "--redis", "redis://127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1, done
    assert done.stderr.startswith("error: EARGS ") and "--cluster" in done.stderr
    assert "Traceback" not in done.stderr


def test_model_commands(redis_server, tmp_path: Path, iris) -> None:
    model = tmp_path / "iris.onnx"
    model.write_bytes(iris.blob)
    url = ["--redis", redis_server.url]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*INFERIS, "model", *url, *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "iris version 1 stored" in run("store", "iris", str(model), "--tag", "team=risk")
    assert "already stored" in run("store", "iris", str(model))
    assert run("list").split() == ["iris"]
    shown = run("get", "iris")
    assert '"team": "risk"' in shown
    info = json.loads(shown)  # the signature was read from the model at store time
    assert info["inputs"] == [{"name": "X", "dtype": "float32", "shape": [-1, 4]}]
    assert [o["name"] for o in info["outputs"]] == ["label", "probabilities"]
    assert "deleted 1 version(s)" in run("del", "iris")
    failed = subprocess.run(
        [*INFERIS, "model", *url, "get", "iris"], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 1 and "EMODEL model iris has no versions" in failed.stderr


def test_lifecycle_commands(redis_server, start_workers, tmp_path: Path, iris) -> None:
    start_workers(1)
    model = tmp_path / "iris.onnx"
    model.write_bytes(iris.blob)
    url = ["--redis", redis_server.url]

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*INFERIS, "model", *url, *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == code, done
        assert "Traceback" not in done.stderr
        return done

    run("store", "iris", str(model))
    assert "production -> 1=10000" in run("alias", "iris", "production", "1", "--by", "ops").stdout
    listed = run("aliases", "iris").stdout
    assert "production" in listed and "1=10000" in listed and "active" in listed
    history = run("history", "iris").stdout
    assert "commit" in history and "by default/ops" in history
    with Client(redis_server.url) as client:
        result = client.run("iris", {"X": iris.features[:1]}, version="production")
    assert run("feedback", "iris", result.rid, str(int(iris.forest.predict(
        iris.features[:1])[0]))).stdout.strip() == "joined (version 1)"
    assert run("feedback", "iris", result.rid, "0").stdout.strip() == "repeated (version 1)"
    assert run("feedback", "iris", "nobody.7", "0").stdout.strip() == "unknown"
    ranked = run("rank", "iris").stdout
    assert "accuracy" in ranked and " 1 " in ranked
    bad = run("alias", "iris", "production", "1=0.5,1=0.5", code=1)
    assert bad.stderr.startswith("error: EARGS") and "twice" in bad.stderr
    bad = run("alias", "iris", "production", "7", code=1)
    assert bad.stderr.startswith("error: EMODEL")
    bad = run("compare", "iris", "1", "2", code=1)
    assert bad.stderr.startswith("error: EARGS")


@pytest.mark.parametrize("name, content, args, says", [
    ("m.pb", b"garbage", ["--backend", "tensorflow", "--format", "graphdef"],
     "INPUT and OUTPUT declarations are required"),
    ("s.py", b"def forward(x):\n    return x\n",
     ["--backend", "torch", "--format", "torchscript-source"], "entry"),
    ("m.onnx", b"garbage", ["--backend", "onnx"], "cannot load this onnx model"),
])
def test_a_model_that_cannot_load_is_refused_at_store_with_one_line(
    redis_server, tmp_path: Path, name: str, content: bytes, args: list[str], says: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    done = subprocess.run(
        [*INFERIS, "model", "--redis", redis_server.url, "store", "m", str(path), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: EARGS") and says in errors[0]
    assert "Traceback" not in done.stderr
    with Client(redis_server.url) as client:
        assert client.modellist() == []  # nothing was stored

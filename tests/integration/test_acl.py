"""ACL roles with real Redis ACL users (``inferis acl``): each role does its job,
and gets ENOPERM/NOPERM for the rest, nothing half-written."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from inferis.client import Client, PermissionDeniedError
from inferis.engine import acl
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool
from inferis.lua import ensure_library

from ..models import IrisModel

PASSWORD = "pw-{role}-0123456789"


def url_of(server: EmbeddedRedis, role: str) -> str:
    return f"redis://{role}:{PASSWORD.format(role=role)}@127.0.0.1:{server.port}"


@pytest.fixture
def roles(redis_server: EmbeddedRedis, r: redis.Redis) -> dict[str, str]:
    for role in acl.ROLES:
        r.execute_command(*acl.setuser(role, role, PASSWORD.format(role=role),
                                       prefix="app:" if role == "client" else ""))
    return {role: url_of(redis_server, role) for role in acl.ROLES}


def denied(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((PermissionDeniedError, redis.exceptions.NoPermissionError)):
        call()


def test_every_role_does_its_job_and_nothing_else(
    redis_server: EmbeddedRedis, r: redis.Redis, roles: dict[str, str], iris: IrisModel
) -> None:
    pool = WorkerPool(roles["worker"], 1, ["--log-level", "WARNING"])
    pool.start()
    try:
        with Client(roles["admin"]) as admin, Client(roles["client"]) as client, \
                Client(roles["feedback"], timeout_ms=20_000) as feedback:
            # admin: models and aliases, not runs or tensors
            admin.modelstore("iris", "onnx", iris.blob)
            admin.alias_set("iris", "production", 1, warm=False)
            admin.set_max_queue(1000)
            denied(lambda: admin.predict("iris", {"X": iris.features[:1]}))
            denied(lambda: admin.tensorset("{inferis:0}:app:x", iris.features[:1]))

            # client: runs, reads models, tensors under its prefix only
            deadline = time.monotonic() + 30
            while True:  # the worker (as the worker role) joins and serves
                try:
                    result = client.run("iris", {"X": iris.features[:2]}, version="production")
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            result.raise_for_error()
            np.testing.assert_array_equal(result.outputs["label"],
                                          iris.forest.predict(iris.features[:2]))
            key = client.key_for("app:42", "features")
            client.tensorset(key, iris.features[:1])
            assert client.predict("iris", {"X": client_ref(key)})["label"].shape == (1,)
            assert client.modelget("iris").version == 1 and client.modellist() == ["iris"]
            denied(lambda: client.tensorset("{inferis:0}:other:x", iris.features[:1]))
            denied(lambda: client.modelstore("evil", "onnx", iris.blob))
            denied(lambda: client.modeldel("iris"))
            denied(lambda: client.alias_set("iris", "production", 1))
            denied(lambda: client.set_max_queue(1))
            denied(lambda: client.feedback("iris", result.rid, 0.0))
            assert not list(r.scan_iter("inferis:{evil}*"))  # nothing half-written

            # feedback: joins truth, reads quality, nothing else
            assert feedback.feedback("iris", result.rid, 0.0)[0] in ("joined", "unknown")
            assert 1 in feedback.quality("iris")
            denied(lambda: feedback.modelstore("evil", "onnx", iris.blob))
            denied(lambda: feedback.predict("iris", {"X": iris.features[:1]}))
            denied(lambda: feedback.alias_set("iris", "production", 1))

            # Active-Active: the admin names the regions; the others read them
            assert admin.set_regions(["eu", "us"]) == ["eu", "us"]
            assert client.regions() == feedback.regions() == ["eu", "us"]
            denied(lambda: client.set_regions(["eu", "us", "ap"]))
            denied(lambda: feedback.set_regions(["eu", "us", "ap"]))
            r.delete("inferis:regions")

            admin.alias_del("iris", "production")
            assert admin.modeldel("iris") == 1
        # no role may do what no role needs
        for url in roles.values():
            conn = redis.Redis.from_url(url)
            for command in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "*"),
                            ("FUNCTION", "DELETE", "inferis"), ("ACL", "SETUSER", "x"),
                            ("CLIENT", "KILL", "ID", "1")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    conn.execute_command(*command)
            conn.close()
        assert pool.processes[0].poll() is None  # the worker role kept working
    finally:
        pool.stop()


def client_ref(key: str):  # type: ignore[no-untyped-def]
    from inferis.client import Ref

    return Ref(key)


def test_acl_command_prints_and_applies(redis_server: EmbeddedRedis, r: redis.Redis) -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "inferis.engine", "acl"]
    printed = subprocess.run([*base, "client", "--user", "app", "--password", "pw",
                              "--prefix", "app:"], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and printed.stdout.startswith("ACL SETUSER app reset on >pw")
    assert "~{inferis:*}:app:*" in printed.stdout
    applied = subprocess.run([*base, "admin", "--user", "ops", "--password", "pw2", "--apply",
                              "--redis", redis_server.url], capture_output=True, text=True,
                             timeout=60)
    assert applied.returncode == 0, applied.stderr
    assert b"ops" in r.execute_command("ACL", "USERS")
    bad = subprocess.run([*base, "nosuch", "--user", "x", "--password", "y"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


def test_a_client_pinned_to_its_caller_name_cannot_count_as_another(
    redis_server: EmbeddedRedis, r: redis.Redis, iris: IrisModel
) -> None:
    r.execute_command(*acl.setuser("pinned", "client", "pw-pinned", prefix="app:", caller="app"))
    url = f"redis://pinned:pw-pinned@127.0.0.1:{redis_server.port}"
    with Client(redis_server.url) as admin:
        admin.modelstore("iris", "onnx", iris.blob)
    with Client(url, caller="app") as mine:
        pending = mine.submit("iris", {"X": iris.features[:1]})  # admitted, queued
        assert not pending.done()
    with Client(url, caller="other") as other:
        denied(lambda: other.submit("iris", {"X": iris.features[:1]}))
    with Client(url) as anonymous:  # a random client id is no caller of its own here
        denied(lambda: anonymous.submit("iris", {"X": iris.features[:1]}))
    assert int(r.hget("{inferis:0}:config", "c:app")) == 1


def test_roles_are_applied_on_every_node_of_sentinel_and_cluster_deployments(
    tmp_path: Path, iris: IrisModel
) -> None:
    """ACL rules are each node's own (Redis does not replicate ACL SETUSER):
    ``inferis acl --apply`` sets them on the primary and replicas a Sentinel names, and
    on every node of a cluster; a named user then works through either URL."""
    import subprocess
    import sys

    from inferis.engine.local.cluster import LocalCluster

    from ..topology import SERVICE, Sentinels, replica_of, wait_for_link

    def apply(role: str, user: str, password: str, url: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "inferis.engine", "acl", role, "--user", user,
             "--password", password, "--apply", "--redis", url],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr

    primary = EmbeddedRedis(tmp_path / "primary", password="pw")
    replica = replica_of(primary, tmp_path / "replica")
    sentinels = Sentinels(tmp_path / "sentinels", primary.port, password="pw")
    cluster = LocalCluster(tmp_path / "cluster", primaries=2, replicas=1)
    try:
        primary.start()
        replica.start()
        wait_for_link(replica)
        sentinels.start()
        ensure_library(primary.client())
        apply("admin", "ops", "opw", sentinels.url)
        for node in (primary, replica):
            assert b"ops" in node.client().execute_command("ACL", "USERS")
        hosts = ",".join(f"127.0.0.1:{p}" for p in sentinels.ports)
        with Client(f"redis+sentinel://ops:opw@{hosts}/{SERVICE}") as ops:
            assert ops.modelstore("iris", "onnx", iris.blob).version == 1
            assert ops.audit("iris")[0]["by"].startswith("ops")  # it is ops that stored it

        cluster.start()
        apply("client", "app", "apw", cluster.url)
        for node in cluster.nodes:
            assert b"app" in node.client().execute_command("ACL", "USERS")
    finally:
        cluster.stop()
        sentinels.stop()
        replica.stop()
        primary.stop()

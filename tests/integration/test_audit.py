"""The audit: stores, deletes, alias changes, exports and worker loads land in the
model's audit stream with the `by` the SDK states (the ACL user, then the caller
id), the stream and the dead letters stay within the bounds a deployment sets,
and the CLI prints it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from inferis.client import ArgumentError, AsyncClient, Client, PermissionDeniedError, signing
from inferis.client.protocol import commands, keys
from inferis.client.protocol.commands import Settlement
from inferis.client.protocol.defaults import GROUP
from inferis.engine import acl
from inferis.engine.local.embedded import EmbeddedRedis

from ..conftest import WorkerFactory, consumer_names
from ..models import scale_model


def url_as(server: EmbeddedRedis, user: str) -> str:
    return f"redis://{user}:pw-{user}@127.0.0.1:{server.port}"


def add_user(r: redis.Redis, user: str, role: str, *more: str) -> None:
    r.execute_command(*acl.setuser(user, role, f"pw-{user}"), *more)


def wait_for(check, timeout_s: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_every_change_and_read_lands_in_the_audit_with_who_stated_it(
    redis_server: EmbeddedRedis, r: redis.Redis, start_workers: WorkerFactory, tmp_path: Path,
) -> None:
    add_user(r, "deployer", "admin")
    add_user(r, "reader", "client")
    private, _ = signing.generate()
    (tmp_path / "k.pem").write_bytes(private)
    x = np.ones((1, 3), np.float32)
    with Client(url_as(redis_server, "deployer"), caller="ci") as admin:
        v1 = admin.modelstore("m", "onnx", scale_model(1.0), signing_key=tmp_path / "k.pem")
        v2 = admin.modelstore("m", "onnx", scale_model(2.0), by="release-7")
        assert not admin.modelstore("m", "onnx", scale_model(2.0)).created  # nothing stored
        admin.alias_set("m", "production", v2.version, by="oncall", warm=False)
        admin.modelexport("m", 1)
        admin.modeldel("m", 1)
        entries = admin.audit("m")
    events = [(e["event"], e.get("alias", ""), e.get("version", ""), e["by"])
              for e in reversed(entries)]
    assert events == [
        ("store", "", "1", "deployer/ci"), ("store", "", "2", "deployer/release-7"),
        ("set", "production", "", "deployer/oncall"),
        ("commit", "production", "", "deployer/oncall"),
        ("read", "", "1", "deployer/ci"), ("delete", "", "1", "deployer/ci"),
    ]
    store = entries[-1]
    assert store["digest"] == v1.digest and store["signer"] and store["encrypted"] == ""
    assert all(int(e["ms"]) > 0 for e in entries)

    # a read-only user reads the audit and the model, but cannot export: MODELGET
    # ... BLOB is a no-writes call, so its read is not in the audit
    with Client(url_as(redis_server, "reader")) as reader:
        assert len(reader.audit("m")) == len(entries)
        with pytest.raises(PermissionDeniedError):
            reader.modelexport("m")
        reader.modelget("m", blob=True)
    with Client(redis_server.url) as client:
        assert len(client.audit("m")) == len(entries)

    # a worker records each version it loads: its ACL user and consumer name
    before = consumer_names(r)
    start_workers(1)
    (consumer,) = {c.decode() for c in consumer_names(r) - before}
    with Client(redis_server.url) as client:
        np.testing.assert_array_equal(client.predict("m", {"X": x}, version="production")["Y"],
                                      2 * x)
        load = wait_for(lambda: [e for e in client.audit("m") if e["event"] == "load"])
    assert load[0]["by"] == f"default/{consumer}" and load[0]["version"] == str(v2.version)
    assert load[0]["digest"] == v2.digest

    # a user Redis will not tell its name (no ACL WHOAMI) is stated as unknown
    add_user(r, "anon", "admin", "-acl|whoami")
    with Client(url_as(redis_server, "anon")) as anon:
        anon.modeldel("m", by="cleanup")
        alias_gone = anon.audit("m", count=3)
    assert [e["event"] for e in alias_gone][:2] == ["delete", "delete"]
    assert {e["by"] for e in alias_gone[:2]} == {"?/cleanup"}
    assert alias_gone[0].get("why") == "model deleted"  # the alias went with the model


async def test_the_asyncio_client_states_the_same_by(
    redis_server: EmbeddedRedis, r: redis.Redis
) -> None:
    add_user(r, "anon", "admin", "-acl|whoami")  # the refusal is handled inside the plan
    async with AsyncClient(redis_server.url, caller="job") as client, \
            AsyncClient(url_as(redis_server, "anon")) as anon:
        await client.modelstore("m", "onnx", scale_model(1.0))
        await anon.modeldel("m", 1, by="gc")
        entries = await client.audit("m")
    events = [(e["event"], e["by"]) for e in entries]
    assert events == [("delete", "?/gc"), ("store", "default/job")]


def test_the_audit_and_dead_letters_keep_the_bounds_a_deployment_sets(
    redis_server: EmbeddedRedis, r: redis.Redis
) -> None:
    with Client(redis_server.url) as client:
        client.modelstore("m", "onnx", scale_model(1.0))
        client.modelstore("m", "onnx", scale_model(2.0))
        client.set_audit_maxlen("m", 1)
        for i in range(150):
            client.alias_set("m", "a", 1 + i % 2, warm=False)  # a set and a commit each
        assert r.xlen(keys.model_key("m", "audit")) < 200  # MAXLEN ~: whole nodes of 100
        history = client.alias_history("m", 5)
        assert len(history) == 5 and all(h["alias"] == "a" for h in history)
        client.set_audit_maxlen("m", 0)  # back to the default: nothing trimmed now
        for _ in range(150):
            client.alias_set("m", "a", 1, warm=False)
        assert r.xlen(keys.model_key("m", "audit")) >= 150

        # dead letters: 300 entries settled as poison, with a bound and without one
        stream, dlq = keys.request_stream(0), keys.deadletter_of(keys.request_stream(0))
        for maxlen, most in ((1, 200), (0, 300)):
            client.set_deadletter_maxlen(maxlen)
            r.delete(stream, dlq)
            r.xgroup_create(stream, GROUP, "0", mkstream=True)
            for i in range(300):
                r.xadd(stream, {"t0": 0, "reply": "", "n": 1, "q": b"", "i": i})
            read = r.xreadgroup(GROUP, "c", {stream: ">"}, count=300)
            settle = [Settlement(e.decode(), 1, [], reason="poison") for e, _ in read[0][1]]
            r.execute_command(*commands.complete(stream, settle).as_args())
            assert (r.xlen(dlq) < most) if maxlen else (r.xlen(dlq) == most)
        with pytest.raises(ArgumentError):
            client.set_deadletter_maxlen(-1)


def test_cli_prints_the_audit_and_sets_retention(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    def inferis(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "inferis.engine", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == code, done
        assert "Traceback" not in done.stderr
        return done

    model = tmp_path / "m.onnx"
    model.write_bytes(scale_model(1.0))
    url = ["model", "--redis", redis_server.url]
    inferis(*url, "store", "m", str(model), "--by", "ci", "--no-inspect")
    inferis(*url, "alias", "m", "production", "1", "--by", "ops", "--no-warm")
    inferis(*url, "export", "m", "--out", str(tmp_path / "back.onnx"))
    assert (tmp_path / "back.onnx").read_bytes() == model.read_bytes()
    lines = inferis(*url, "audit", "m").stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["read", "commit", "set", "store"]
    assert "by default/ci" in lines[-1] and "v1" in lines[-1] and "by default" in lines[0]
    assert "by default/ops" in inferis(*url, "history", "m").stdout  # alias events only
    assert "store" not in inferis(*url, "history", "m").stdout
    bad = inferis(*url, "audit", "m", "--count", "0", code=1)
    assert bad.stderr.startswith("error: EARGS count must be")
    set_out = inferis("retention", "--redis", redis_server.url, "--deadletter-maxlen", "500",
                      "--model", "m", "--audit-maxlen", "50").stdout
    assert "deadletter_maxlen 500 on partition(s) 0" in set_out and "audit_maxlen 50" in set_out
    assert inferis("retention", "--redis", redis_server.url, "--audit-maxlen", "5",
                   code=1).stderr.startswith("error: EARGS --audit-maxlen needs --model")
    r = redis.Redis.from_url(redis_server.url)
    assert r.hget(keys.partition_limits(0), "deadletter_maxlen") == b"500"
    assert r.hget(keys.model_key("m", "limits"), "audit_maxlen") == b"50"

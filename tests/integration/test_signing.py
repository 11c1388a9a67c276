"""Signed model versions: workers with a trusted key and --require-signatures load
what a trusted key signed and refuse the rest (unsigned, another key, a flipped
byte), while the other requests go on being served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from inferis.client import Client, SignatureError, signing
from inferis.client.protocol import commands

from ..conftest import WorkerFactory
from ..models import IrisModel, scale_model


@pytest.fixture
def keypairs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    pairs = {}
    for name in ("trusted", "other"):
        private, public = signing.generate()
        (tmp_path / f"{name}.pem").write_bytes(private)
        (tmp_path / f"{name}.pub.pem").write_bytes(public)
        pairs[name] = (tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem")
    return pairs


def test_policy_loads_only_what_a_trusted_key_signed(
    client: Client, r: redis.Redis, start_workers: WorkerFactory, iris: IrisModel,
    keypairs: dict[str, tuple[Path, Path]],
) -> None:
    trusted_key, trusted_pub = keypairs["trusted"]
    other_key, _ = keypairs["other"]
    start_workers(1, "--trusted-keys", str(trusted_pub), "--require-signatures")
    x = np.ones((1, 3), np.float32)

    signed = client.modelstore("good", "onnx", scale_model(2.0), signing_key=trusted_key)
    info = client.modelget("good")
    assert len(info.signature) == 128 and info.signer
    np.testing.assert_array_equal(client.predict("good", {"X": x})["Y"], 2 * x)
    assert signed.digest == info.digest

    client.modelstore("unsigned", "onnx", scale_model(3.0))
    with pytest.raises(SignatureError, match="not signed"):
        client.predict("unsigned", {"X": x})

    client.modelstore("stranger", "onnx", scale_model(4.0), signing_key=other_key)
    with pytest.raises(SignatureError, match="not valid"):
        client.predict("stranger", {"X": x})

    # one flipped byte under the original's signature: the signature no longer fits
    blob = bytearray(scale_model(5.0))
    signature, signer = signing.sign(trusted_key, commands.sha256_hex(bytes(blob)), "onnx", "")
    blob[-1] ^= 0x01
    (store,) = commands.modelstore("flipped", "onnx", bytes(blob))
    r.execute_command("FCALL", "MODELSTORE", 1, "flipped", *store.args,
                      "SIGNATURE", signature, "SIGNER", signer)
    with pytest.raises(SignatureError, match="not valid"):
        client.predict("flipped", {"X": x})

    # a signature moved to another way of reading the same file does not fit either
    blob2 = scale_model(6.0)
    signature, signer = signing.sign(trusted_key, commands.sha256_hex(blob2), "torch", "")
    (store,) = commands.modelstore("moved", "onnx", blob2)
    r.execute_command("FCALL", "MODELSTORE", 1, "moved", *store.args,
                      "SIGNATURE", signature, "SIGNER", signer)
    with pytest.raises(SignatureError):
        client.predict("moved", {"X": x})

    np.testing.assert_array_equal(client.predict("good", {"X": x})["Y"], 2 * x)  # still served


def test_without_require_only_bad_signatures_are_refused(
    client: Client, start_workers: WorkerFactory, keypairs: dict[str, tuple[Path, Path]]
) -> None:
    start_workers(1, "--trusted-keys", str(keypairs["trusted"][1]))
    x = np.ones((1, 3), np.float32)
    client.modelstore("plain", "onnx", scale_model(3.0))
    np.testing.assert_array_equal(client.predict("plain", {"X": x})["Y"], 3 * x)
    client.modelstore("stranger", "onnx", scale_model(4.0), signing_key=keypairs["other"][0])
    with pytest.raises(SignatureError):
        client.predict("stranger", {"X": x})


def test_bad_signatures_and_keys_are_clear_errors(
    client: Client, r: redis.Redis, tmp_path: Path, redis_server
) -> None:
    (store,) = commands.modelstore("m", "onnx", scale_model(1.0))
    with pytest.raises(redis.ResponseError, match="EARGS SIGNATURE"):
        r.execute_command("FCALL", "MODELSTORE", 1, "m", *store.args, "SIGNATURE", "zz")
    (tmp_path / "not-a-key.pem").write_text("hello")
    from inferis.client import ArgumentError

    with pytest.raises(ArgumentError, match="PEM private key"):
        client.modelstore("m", "onnx", scale_model(1.0), signing_key=tmp_path / "not-a-key.pem")
    done = subprocess.run(
        [sys.executable, "-m", "inferis.engine", "worker", "--redis", redis_server.url,
         "--require-signatures"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error: EARGS")
    assert "--trusted-keys" in done.stderr and "Traceback" not in done.stderr


def test_cli_generates_keys_and_signs_at_store(
    redis_server, start_workers: WorkerFactory, tmp_path: Path, iris: IrisModel
) -> None:
    run = [sys.executable, "-m", "inferis.engine"]
    done = subprocess.run([*run, "keys", "generate", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "inferis-signing.pem", tmp_path / "inferis-signing.pub.pem"
    assert private.stat().st_mode & 0o077 == 0 and public.exists()
    again = subprocess.run([*run, "keys", "generate", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "not overwriting" in again.stderr
    model = tmp_path / "iris.onnx"
    model.write_bytes(iris.blob)
    done = subprocess.run([*run, "model", "--redis", redis_server.url, "store", "iris",
                           str(model), "--sign", str(private)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    start_workers(1, "--trusted-keys", str(public), "--require-signatures")
    with Client(redis_server.url) as client:
        out = client.predict("iris", {"X": iris.features[:2]})
    np.testing.assert_array_equal(out["label"], iris.forest.predict(iris.features[:2]))

"""Models encrypted at rest: real workers with the envelope key serve them, workers
without it (or with another) refuse them with ESIGNATURE while serving the rest,
and Redis never holds the plaintext."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from inferis.client import Client, SignatureError, encryption, signing
from inferis.client.protocol import commands, keys

from ..conftest import WorkerFactory
from ..models import IrisModel, scale_model


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name in ("right", "wrong"):
        paths[name] = tmp_path / f"{name}.key"
        encryption.write_key_file(paths[name], encryption.generate())
    return paths


def stored_bytes(r: redis.Redis, name: str, digest: str, chunks: int) -> bytes:
    return b"".join(r.get(keys.model_key(name, f"blob:{digest}:{i}")) for i in range(chunks))


def assert_hidden(plain: bytes, stored: bytes) -> None:
    """No 32-byte piece of the plaintext is anywhere in what Redis holds."""
    assert stored != plain and len(stored) == len(plain) + 5 + 12 + 16
    for start in range(0, len(plain) - 32, 32):
        assert plain[start:start + 32] not in stored


def test_a_worker_with_the_key_serves_what_redis_holds_only_encrypted(
    client: Client, r: redis.Redis, start_workers: WorkerFactory, iris: IrisModel,
    key_files: dict[str, Path], tmp_path: Path,
) -> None:
    start_workers(1, "--model-key-file", f"{key_files['wrong']},{key_files['right']}")
    stored = client.modelstore("iris", "onnx", iris.blob, encryption_key=key_files["right"])
    info = client.modelget("iris")
    assert info.encrypted == encryption.key_id(encryption.load_key(key_files["right"]))
    raw = stored_bytes(r, "iris", info.digest, info.chunks)
    assert_hidden(iris.blob, raw)
    assert info.digest == commands.sha256_hex(raw) == stored.digest  # over the ciphertext
    out = client.predict("iris", {"X": iris.features[:5]})
    np.testing.assert_array_equal(out["label"], iris.forest.predict(iris.features[:5]))
    # the same file under the same key is the same version
    again = client.modelstore("iris", "onnx", iris.blob, encryption_key=key_files["right"])
    assert (again.version, again.created) == (stored.version, False)
    # an admin's export: as stored, or decrypted with the key
    assert client.modelexport("iris")[1] == raw
    assert client.modelexport("iris", encryption_key=key_files["right"])[1] == iris.blob
    with pytest.raises(SignatureError, match="no such key"):
        client.modelexport("iris", encryption_key=key_files["wrong"])
    # signed and encrypted: the signature is over the stored bytes, checked first
    private, public = signing.generate()
    (tmp_path / "s.pem").write_bytes(private)
    (tmp_path / "s.pub.pem").write_bytes(public)
    client.modelstore("both", "onnx", scale_model(2.0), encryption_key=key_files["right"],
                      signing_key=tmp_path / "s.pem")
    both = client.modelget("both")
    assert signing.verify(signing.public_keys(tmp_path / "s.pub.pem"), both.signature,
                          both.digest, "onnx", "")


def test_workers_without_the_key_or_with_another_refuse_it_and_serve_the_rest(
    client: Client, r: redis.Redis, start_workers: WorkerFactory, iris: IrisModel,
    key_files: dict[str, Path],
) -> None:
    x = np.ones((1, 3), np.float32)
    client.modelstore("secret", "onnx", scale_model(3.0), encryption_key=key_files["right"])
    client.modelstore("plain", "onnx", scale_model(2.0))
    # an altered ciphertext under the right key id (a new version, so a new digest)
    info = client.modelget("secret")
    blob = bytearray(stored_bytes(r, "secret", info.digest, info.chunks))
    blob[-1] ^= 0x01
    (store,) = commands.modelstore("altered", "onnx", bytes(blob))
    r.execute_command("FCALL", "MODELSTORE", 1, "altered", *store.args,
                      "ENCRYPTED", info.encrypted)

    keyless = start_workers(1)
    with pytest.raises(SignatureError, match="does not hold"):
        client.predict("secret", {"X": x})
    np.testing.assert_array_equal(client.predict("plain", {"X": x})["Y"], 2 * x)
    keyless.stop(grace_s=10)

    start_workers(1, "--model-key-file", str(key_files["wrong"]))
    with pytest.raises(SignatureError, match=f"encrypted with key {info.encrypted}"):
        client.predict("secret", {"X": x})
    np.testing.assert_array_equal(client.predict("plain", {"X": x})["Y"], 2 * x)

    start_workers(1, "--model-key-file", str(key_files["right"]))
    result = client.run("altered", {"X": x})  # whichever worker takes it refuses it
    assert result.error is not None and result.error.code == "ESIGNATURE"
    assert "does not decrypt" in result.error.message or "does not hold" in result.error.message


def test_cli_generates_an_envelope_key_stores_encrypted_and_exports(
    redis_server, start_workers: WorkerFactory, tmp_path: Path, iris: IrisModel
) -> None:
    run = [sys.executable, "-m", "inferis.engine"]

    def inferis(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*run, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == code, done
        assert "Traceback" not in done.stderr
        return done

    inferis("keys", "generate", "--encryption", "--out", str(tmp_path))
    key = tmp_path / "inferis-model.key"
    assert key.stat().st_mode & 0o077 == 0 and len(key.read_bytes()) == 32
    assert "not overwriting" in inferis("keys", "generate", "--encryption", "--out",
                                        str(tmp_path), code=1).stderr
    model = tmp_path / "iris.onnx"
    model.write_bytes(iris.blob)
    url = ["model", "--redis", redis_server.url]
    assert "stored encrypted" in inferis(*url, "store", "iris", str(model), "--encrypt",
                                         str(key)).stdout
    inferis(*url, "export", "iris", "--out", str(tmp_path / "back.onnx"), "--decrypt", str(key))
    assert (tmp_path / "back.onnx").read_bytes() == iris.blob
    (tmp_path / "bad.key").write_text("not a key")
    bad = inferis("worker", "--redis", redis_server.url, "--model-key-file",
                  str(tmp_path / "bad.key"), code=1)
    assert bad.stderr.startswith("error: EARGS --model-key-file")
    start_workers(1, "--model-key-file", str(key))
    with Client(redis_server.url) as client:
        out = client.predict("iris", {"X": iris.features[:2]})
    np.testing.assert_array_equal(out["label"], iris.forest.predict(iris.features[:2]))

"""The sandbox: models whose ops reach for files or the network get an error, ordinary
ones serve, and the same hostile models do read the file when the sandbox is off (so
these tests can tell the difference)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inferis.client import BackendError, Client, ModelInfo
from inferis.engine.backends.base import BackendOptions
from inferis.engine.isolation.runner import IsolatedRunner
from inferis.engine.isolation.sandbox import landlock_abi

from ..conftest import WorkerFactory

pytestmark = pytest.mark.skipif(landlock_abi() < 1, reason="this kernel offers no Landlock")

# A file the worker's user can read and no model should: outside every allowed path.
SECRET = b"not for models\n"
READ_SCRIPT = (
    "def leak(x: Tensor) -> Tensor:\n"
    "    return torch.from_file({path!r}, False, {size}, dtype=torch.uint8)\n"
    "def double(x: Tensor) -> Tensor:\n"
    "    return x * 2\n"
)


@pytest.fixture
def secret(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "token"
    path.write_bytes(SECRET)
    return path


def _script(secret: Path) -> bytes:
    return READ_SCRIPT.format(path=str(secret), size=len(SECRET)).encode()


def _info(name: str, blob: bytes, entry: str) -> ModelInfo:
    return ModelInfo(
        name=name, version=1, digest=hashlib.sha256(blob).hexdigest(), backend="torch",
        format="torchscript-source", device="CPU", extra={"entry": entry}, size=len(blob),
    )


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandboxed", "unconfined"])
def test_a_torchscript_file_read_is_refused_only_in_the_sandbox(
    secret: Path, sandbox: bool
) -> None:
    blob = _script(secret)
    x = {"x": np.ones(3, np.float32)}
    with IsolatedRunner(BackendOptions(), sandbox=sandbox) as runner:
        runner.load("leak", blob, _info("leak", blob, "leak"))
        runner.load("double", blob, _info("double", blob, "double"))
        if sandbox:
            with pytest.raises(BackendError, match="Permission denied"):
                runner.run("leak", x, 30)
        else:
            (out,) = runner.run("leak", x, 30).values()
            assert out.tobytes() == SECRET
        (doubled,) = runner.run("double", x, 30).values()
        np.testing.assert_array_equal(doubled, [2, 2, 2])


def test_the_sandbox_refuses_files_sockets_and_signals_but_keeps_unix_pairs(
    tmp_path: Path, secret: Path
) -> None:
    """What the backend process may do, checked from a process confined the same way."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    probe = textwrap.dedent(f"""
        import os, signal, socket, sys
        from pathlib import Path
        from inferis.engine.isolation.sandbox import confine
        sys.path.insert(0, os.getcwd())  # what python -m does: the working directory
        confine(Path({str(scratch)!r}))
        def attempt(what, action):
            try:
                action()
                print(what, "allowed")
            except OSError as exc:
                print(what, "refused", exc.errno)
        attempt("read-secret", lambda: open({str(secret)!r}, "rb").read())
        attempt("read-working-dir", lambda: open({secret.name!r}, "rb").read())
        attempt("read-parent-cmdline", lambda: open(f"/proc/{{os.getppid()}}/cmdline").read())
        attempt("write-outside", lambda: open({str(tmp_path / "outside")!r}, "w"))
        attempt("write-scratch", lambda: Path({str(scratch)!r}, "inside").write_text("ok"))
        attempt("tcp-connect", lambda: socket.create_connection(("127.0.0.1", {port}), 2))
        attempt("udp-socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        attempt("unix-pair", lambda: socket.socketpair())
        attempt("signal-parent", lambda: os.kill(os.getppid(), 0))
        import numpy
        attempt("python-imports", lambda: __import__("json"))
    """)
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
            check=True, cwd=secret.parent,
        )
    finally:
        listener.close()
    outcome = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert outcome == {
        "read-secret": "refused 13",
        "read-working-dir": "refused 13",
        "read-parent-cmdline": "refused 13",
        "write-outside": "refused 13",
        "write-scratch": "allowed",
        "tcp-connect": "refused 1",
        "udp-socket": "refused 1",
        "unix-pair": "allowed",
        "signal-parent": "refused 1",
        "python-imports": "allowed",
    }, result.stderr
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_workers_confine_torchscript_by_default(
    client: Client, start_workers: WorkerFactory, secret: Path, iris, mode: str
) -> None:
    start_workers(1, "--sandbox", mode)
    blob = _script(secret)
    client.modelstore("leak", "torch", blob, format="torchscript-source", extra={"entry": "leak"})
    client.modelstore(
        "double", "torch", blob, format="torchscript-source", extra={"entry": "double"}
    )
    client.modelstore("iris", "onnx", iris.blob)
    x = np.ones(3, np.float32)
    if mode == "auto":
        with pytest.raises(BackendError, match="Permission denied"):
            client.predict("leak", {"x": x})
    else:
        (out,) = client.predict("leak", {"x": x}).values()
        assert out.tobytes() == SECRET
    (doubled,) = client.predict("double", {"x": x}).values()
    np.testing.assert_array_equal(doubled, 2 * x)
    features = iris.features[::30]
    out = client.predict("iris", {"X": features})
    np.testing.assert_array_equal(out["label"], iris.reference(features)["label"])


def test_tensorflow_file_ops_are_refused_in_the_sandbox(
    client: Client, start_workers: WorkerFactory, secret: Path, tmp_path: Path
) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    from inferis.engine.backends.tensorflow import pack_saved_model

    planted = tmp_path / "planted"

    class FileOps(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def read(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"data": tf.io.read_file(str(secret)), "y": x}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def write(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            with tf.control_dependencies([tf.io.write_file(str(planted), "pwned")]):
                return {"y": tf.identity(x)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * 2}

    module = FileOps()
    directory = tmp_path / "fileops"
    tf.saved_model.save(module, str(directory), signatures={
        "read": module.read, "write": module.write, "serving_default": module.double,
    })
    blob = pack_saved_model(directory)
    start_workers(1)
    for signature in ("read", "write", "serving_default"):
        client.modelstore(f"tf-{signature}", "tensorflow", blob, extra={"signature": signature})
    x = np.ones(2, np.float32)
    with pytest.raises(BackendError, match="Permission denied"):
        client.predict("tf-read", {"x": x})
    with pytest.raises(BackendError, match="Permission denied"):
        client.predict("tf-write", {"x": x})
    assert not planted.exists()
    (doubled,) = client.predict("tf-serving_default", {"x": x}).values()
    np.testing.assert_array_equal(doubled, 2 * x)

"""Backends in a supervised child process: same results as in-process, hung runs cut off,
crashed or killed children replaced, load errors reported as an in-process load does."""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferis.client import BackendError, BackendUnavailableError, InputError, ModelInfo
from inferis.engine.backends.base import BackendOptions, RunTimeout
from inferis.engine.backends.onnx import OnnxBackend
from inferis.engine.isolation.runner import IsolatedModel, IsolatedRunner

from .. import models

OPTIONS = BackendOptions()
# Generous: these tests check that a hung run is cut off, never how fast.
HANG_TIMEOUT_S = 1.0
SPIN_SCRIPT = b"def spin(x: Tensor) -> Tensor:\n    while True:\n        x = x + 0\n    return x\n"


def _info(
    name: str,
    blob: bytes,
    backend: str = "onnx",
    fmt: str = "onnx",
    extra: dict[str, object] | None = None,
) -> ModelInfo:
    return ModelInfo(
        name=name, version=1, digest=hashlib.sha256(blob).hexdigest(), backend=backend,
        format=fmt, device="CPU", extra=extra or {}, size=len(blob),
    )


def _save(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=models.OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def identity_model() -> bytes:
    """Passes through a str, a float32, a bool and an int64 matrix."""
    kinds = {
        "S": TensorProto.STRING, "F": TensorProto.FLOAT,
        "B": TensorProto.BOOL, "I": TensorProto.INT64,
    }
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n in kinds],
        "identity",
        [helper.make_tensor_value_info(n, t, [None, None]) for n, t in kinds.items()],
        [helper.make_tensor_value_info(f"{n}_out", t, [None, None]) for n, t in kinds.items()],
    )
    return _save(graph)


def matmul_model(width: int) -> bytes:
    """Y = X @ W with a width x width float32 weight: a blob of width² * 4 bytes and more."""
    weight = np.random.default_rng(1).standard_normal((width, width), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, width])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    return _save(graph)


def spin_model() -> bytes:
    """An ONNX Loop with no trip count and a condition that stays true: it never returns."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [None]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [None]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["go"], value=helper.make_tensor("go", TensorProto.BOOL, [], [1])
            ),
            helper.make_node("Loop", ["", "go", "X"], ["Y"], body=body),
        ],
        "spin",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])],
    )
    return _save(graph)


def _in_process(blob: bytes, info: ModelInfo, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return OnnxBackend().load(blob, info, OPTIONS).run(feed)


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _reapable(pid: int) -> bool:
    """Our child has fully exited (all its threads), without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _wait_until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def runner() -> Iterator[IsolatedRunner]:
    with IsolatedRunner(OPTIONS) as isolated:
        yield isolated


def test_results_and_specs_equal_the_in_process_backend(runner: IsolatedRunner) -> None:
    rng = np.random.default_rng(0)
    cases = [
        ("scale", models.scale_model(2.5), {"X": rng.standard_normal((4, 3), np.float32)}),
        # A 1 MiB blob: sent out of band, as large arrays are.
        ("matmul", matmul_model(512), {"X": rng.standard_normal((3, 512), np.float32)}),
        ("two", models.two_input_model(), {
            "A": rng.standard_normal((2, 5)), "B": rng.standard_normal((2, 5)),
        }),
        # Small arrays travel inside the pickle, large ones (1 MiB here) out of band.
        ("identity", identity_model(), {
            "S": np.array([["a", "bé"], ["", "ccc"]], dtype=object),
            "F": rng.standard_normal((512, 512), np.float32),
            "B": rng.standard_normal((3, 70_000)) > 0,
            "I": np.arange(12, dtype=np.int64).reshape(3, 4),
        }),
    ]
    for name, blob, feed in cases:
        info = _info(name, blob)
        direct = OnnxBackend().load(blob, info, OPTIONS)
        inputs, outputs, device = runner.load(name, blob, info)
        assert (inputs, outputs, device) == (direct.inputs, direct.outputs, direct.device)
        got = runner.run(name, feed, timeout_s=60)
        _assert_same(got, direct.run(feed))
        assert all(a.flags.writeable for a in got.values())
    # Fortran-ordered and non-contiguous inputs arrive with the same values.
    x = np.asfortranarray(rng.standard_normal((300, 300), np.float32))
    for feed_x in (x, x[:, ::2]):
        _assert_same(
            runner.run("identity", {**cases[3][2], "F": feed_x}, timeout_s=60),
            _in_process(cases[3][1], _info("identity", cases[3][1]), {**cases[3][2], "F": feed_x}),
        )
    assert runner.starts == 1


def test_a_run_error_reads_as_in_process_and_keeps_the_child(runner: IsolatedRunner) -> None:
    blob = models.failing_model()
    info = _info("reshape", blob)
    runner.load("reshape", blob, info)
    pid = runner.pid
    bad = {"X": np.ones(3, np.float32)}
    with pytest.raises(Exception) as direct:
        _in_process(blob, info, bad)
    with pytest.raises(BackendError) as isolated:
        runner.run("reshape", bad, timeout_s=60)
    assert isolated.value.message == (
        f"model reshape v1 failed: {type(direct.value).__name__}: {direct.value}"
    )
    good = {"X": np.arange(4, dtype=np.float32)}
    _assert_same(runner.run("reshape", good, timeout_s=60), _in_process(blob, info, good))
    assert runner.pid == pid and runner.starts == 1


def test_load_errors_keep_their_type_and_message(runner: IsolatedRunner) -> None:
    junk = b"this is not an onnx model"
    info = _info("junk", junk)
    with pytest.raises(Exception) as direct:
        OnnxBackend().load(junk, info, OPTIONS)
    with pytest.raises(BackendError) as isolated:
        runner.load("junk", junk, info)
    assert isolated.value.message == (
        f"cannot load model junk v1 with backend onnx: {type(direct.value).__name__}: "
        f"{direct.value}"
    )
    with pytest.raises(BackendUnavailableError, match="backend 'nope' is not available"):
        runner.load("nope", junk, _info("nope", junk, backend="nope"))
    # A failed load leaves nothing under its key, and the runner keeps serving.
    with pytest.raises(BackendError, match="no model is loaded under 'junk'"):
        runner.run("junk", {}, timeout_s=60)
    blob = models.scale_model(3.0)
    runner.load("scale", blob, _info("scale", blob))
    x = {"X": np.ones((1, 3), np.float32)}
    _assert_same(runner.run("scale", x, timeout_s=60), _in_process(blob, _info("s", blob), x))


def test_a_hung_run_is_cut_off_and_the_next_run_reloads(runner: IsolatedRunner) -> None:
    scale, spin = models.scale_model(2.0), spin_model()
    runner.load("scale", scale, _info("scale", scale))
    runner.load("spin", spin, _info("spin", spin))
    first = runner.pid
    with pytest.raises(RunTimeout) as timed_out:
        runner.run("spin", {"X": np.ones(2, np.float32)}, timeout_s=HANG_TIMEOUT_S)
    assert isinstance(timed_out.value, BackendError) and timed_out.value.code == "EBACKEND"
    assert timed_out.value.timeout_ms == 1000
    assert "model spin v1 exceeded its execution timeout of 1000 ms" in timed_out.value.message
    assert first is not None and _gone(first) and runner.pid is None
    # The other model was lost with the child: it is loaded again, transparently.
    x = {"X": np.arange(6, dtype=np.float32).reshape(2, 3)}
    _assert_same(runner.run("scale", x, timeout_s=60), _in_process(scale, _info("s", scale), x))
    assert runner.pid not in (None, first)
    assert (runner.starts, runner.timeouts, runner.crashes) == (2, 1, 0)
    # The hung model is still known: it hangs again, and is cut off again.
    with pytest.raises(RunTimeout):
        runner.run("spin", {"X": np.ones(2, np.float32)}, timeout_s=HANG_TIMEOUT_S)
    assert runner.timeouts == 2


def test_isolated_models_take_their_timeout_from_meta(runner: IsolatedRunner) -> None:
    spin = spin_model()
    feed = {"X": np.ones(2, np.float32)}
    timed = IsolatedModel(runner, "timed", spin, _info("timed", spin, extra={"timeout_ms": 800}))
    assert timed.timeout_ms == 800
    direct = OnnxBackend().load(spin, _info("timed", spin), OPTIONS)
    assert (timed.inputs, timed.outputs) == (direct.inputs, direct.outputs)
    with pytest.raises(RunTimeout, match="timeout of 800 ms"):
        timed.run(feed)
    with IsolatedRunner(OPTIONS, default_timeout_ms=700) as short:
        untimed = IsolatedModel(short, "untimed", spin, _info("untimed", spin))
        assert untimed.timeout_ms == 700
        with pytest.raises(RunTimeout, match="timeout of 700 ms"):
            untimed.run(feed)
    for bad in ("fast", -5, 0, True, [1]):
        with pytest.raises(BackendError, match=r"META timeout_ms must be a positive number"):
            IsolatedModel(runner, "bad", spin, _info("bad", spin, extra={"timeout_ms": bad}))


def test_a_child_killed_mid_run_is_reported_and_replaced(runner: IsolatedRunner) -> None:
    scale, spin = models.scale_model(4.0), spin_model()
    runner.load("scale", scale, _info("scale", scale))
    runner.load("spin", spin, _info("spin", spin))
    pid = runner.pid
    assert pid is not None
    idle = _cpu_ticks(pid)

    def kill_once_spinning() -> None:
        # The child is idle until the run arrives: CPU time it burns is the run.
        _wait_until(lambda: _cpu_ticks(pid) >= idle + 20)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_spinning)
    killer.start()
    try:
        with pytest.raises(BackendError) as died:
            runner.run("spin", {"X": np.ones(2, np.float32)}, timeout_s=120)
    finally:
        killer.join()
    assert not isinstance(died.value, RunTimeout)
    assert died.value.message == "the backend process died (signal 9) while running model spin v1"
    x = {"X": np.ones((2, 3), np.float32)}
    _assert_same(runner.run("scale", x, timeout_s=60), _in_process(scale, _info("s", scale), x))
    assert (runner.starts, runner.crashes) == (2, 1)


def test_a_child_that_died_while_idle_is_replaced_transparently(runner: IsolatedRunner) -> None:
    blob = models.two_input_model()
    runner.load("two", blob, _info("two", blob))
    pid = runner.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: _reapable(pid))
    feed = {"A": np.eye(3), "B": np.full((3, 3), 0.5)}
    _assert_same(runner.run("two", feed, timeout_s=60), _in_process(blob, _info("t", blob), feed))
    assert runner.pid != pid and runner.starts == 2 and runner.crashes == 0


def test_unload_replace_and_close(runner: IsolatedRunner) -> None:
    two, three = models.scale_model(2.0), models.scale_model(3.0)
    x = {"X": np.ones((1, 3), np.float32)}
    runner.load("m", two, _info("m", two))
    runner.load("m", three, _info("m", three))  # the same key now holds the other model
    _assert_same(runner.run("m", x, timeout_s=60), _in_process(three, _info("m", three), x))
    model = IsolatedModel(runner, "k", two, _info("k", two))
    key = model._key
    model.close()
    with pytest.raises(BackendError, match="no model is loaded under"):
        runner.run(key, x, timeout_s=60)
    dropped = IsolatedModel(runner, "k", two, _info("k", two))  # evicted, never closed
    key = dropped._key
    assert runner.run(key, x, timeout_s=60)["Y"].tolist() == [[2.0] * 3]
    del dropped
    gc.collect()  # its finalizer releases it; the runner forgets it at the next call
    with pytest.raises(BackendError, match="no model is loaded under"):
        runner.run(key, x, timeout_s=60)
    pid = runner.pid
    assert pid is not None
    runner.close()
    assert runner.pid is None
    _wait_until(lambda: _gone(pid))


def test_torchscript_runs_errors_and_endless_loops(runner: IsolatedRunner) -> None:
    pytest.importorskip("torch")
    from inferis.engine.backends.torch import TorchBackend

    script = SPIN_SCRIPT + b"def double(x: Tensor) -> Tensor:\n    return x * 2\n"
    double = _info("double", script, "torch", "torchscript-source", {"entry": "double"})
    spin = _info("spin", script, "torch", "torchscript-source", {"entry": "spin"})
    with pytest.raises(BackendError, match=r'torchscript-source needs META \{"entry"'):
        runner.load("nameless", script, _info("nameless", script, "torch", "torchscript-source"))
    runner.load("double", script, double)
    runner.load("spin", script, spin)
    direct = TorchBackend().load(script, double, OPTIONS)
    feeds = [
        {"x": np.arange(5, dtype=np.int64)},
        {"x": np.linspace(-3, 3, 7).astype(ml_dtypes.bfloat16)},
        {"x": np.linspace(-3, 3, 70_000).astype(np.float16).reshape(2, -1)},  # out of band
    ]
    for feed in feeds:
        _assert_same(runner.run("double", feed, timeout_s=60), direct.run(feed))
    # An inferis error raised by the backend in the child keeps its type.
    with pytest.raises(InputError, match="input x is a str tensor"):
        runner.run("double", {"x": np.array(["a"], dtype=object)}, timeout_s=60)
    with pytest.raises(RunTimeout, match="model spin v1 exceeded"):
        runner.run("spin", {"x": np.ones(1, np.float32)}, timeout_s=HANG_TIMEOUT_S)
    _assert_same(runner.run("double", feeds[0], timeout_s=60), direct.run(feeds[0]))


def test_the_child_does_not_outlive_its_parent(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import sys, time
        from inferis.engine.backends.base import BackendOptions
        from inferis.engine.isolation.runner import IsolatedRunner
        from tests.integration.test_isolation import _info, spin_model
        import numpy as np

        runner = IsolatedRunner(BackendOptions())
        blob = spin_model()
        runner.load("spin", blob, _info("spin", blob))
        print(runner.pid, flush=True)
        runner.run("spin", {"X": np.ones(2, np.float32)}, timeout_s=3600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        idle = _cpu_ticks(child)
        _wait_until(lambda: _cpu_ticks(child) >= idle + 20)  # stuck in the endless run
        parent.kill()
        parent.wait()
        _wait_until(lambda: _gone(child))
    finally:
        parent.kill()
        parent.wait()


# ------------------------------------------------------------- through the worker


def test_a_hung_model_is_cut_off_and_the_worker_goes_on(client, start_workers) -> None:
    start_workers(1, "--isolate-backends")
    client.modelstore("spin", "onnx", spin_model(), extra={"timeout_ms": 1000})
    client.modelstore("scale", "onnx", models.scale_model(2.0))
    with pytest.raises(BackendError, match="exceeded its execution timeout of 1000 ms"):
        client.predict("spin", [np.ones(3, np.float32)])
    assert client.predict("scale", [np.ones((1, 3), np.float32)])["Y"].tolist() == [[2.0] * 3]


def test_every_request_of_a_hung_batch_is_told(client, start_workers) -> None:
    client.modelstore("spin", "onnx", spin_model(), extra={"timeout_ms": 1500}, batch=(8, 0))
    futures = [client.submit("spin", [np.ones(2, np.float32)]) for _ in range(4)]
    start_workers(1, "--isolate-backends")
    for future in futures:
        with pytest.raises(BackendError, match="exceeded its execution timeout"):
            client.wait(future).raise_for_error()
    # the worker kept serving
    client.modelstore("scale", "onnx", models.scale_model(3.0))
    assert client.predict("scale", [np.ones((1, 3), np.float32)])["Y"].tolist() == [[3.0] * 3]

"""``inferis.client.redisai.Client`` against a real Redis and worker, case by case as
redisai-py's own tests expect of its client (round trips, returned dicts, errors)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from inferis.client.redisai import Client
from inferis.engine.local.embedded import EmbeddedRedis

from ..conftest import WorkerFactory
from ..models import IrisModel, scale_model


@pytest.fixture
def con(redis_server: EmbeddedRedis) -> Client:
    c = Client(host="127.0.0.1", port=redis_server.port)
    yield c
    c.close()


def test_it_is_a_redis_client_with_the_same_constructor(con: Client) -> None:
    assert isinstance(con, redis.Redis)
    assert con.set("plain", "1") and con.get("plain") == b"1"
    assert Client(False).debug is False  # Client(debug) positional, as upstream tests call it


def test_tensor_round_trips_as_values_and_meta(con: Client) -> None:
    assert con.tensorset("x", (2, 3, 4, 5), dtype="float") == "OK"
    assert con.tensorget("x", as_numpy=False) == {"dtype": "FLOAT", "shape": [4],
                                                  "values": [2.0, 3.0, 4.0, 5.0]}
    con.tensorset("x", (2, 3, 4, 5), dtype="float64")
    assert con.tensorget("x", as_numpy=False)["dtype"] == "DOUBLE"
    con.tensorset("x", (2, 3, 4, 5), shape=(2, 2), dtype="int16")
    assert con.tensorget("x", as_numpy=False)["shape"] == [2, 2]
    con.tensorset("x", (1, 1, 0, 0), dtype="bool")
    got = con.tensorget("x", as_numpy=False)
    assert got["dtype"] == "BOOL" and got["values"] == [True, True, False, False]
    con.tensorset("x", (1, 2, 3), dtype="int8")
    assert con.tensorget("x", as_numpy=False)["dtype"] == "INT8"
    assert con.tensorget("x", meta_only=True) == {"dtype": "INT8", "shape": [3]}
    with pytest.raises(TypeError):
        con.tensorset("x", (2, 3), dtype="wrongtype")
    with pytest.raises(TypeError):
        con.tensorset("x", (2, 3))


def test_numpy_round_trips_read_only_unless_mutable(con: Client) -> None:
    for dtype in (np.float32, np.float64, np.int64, np.bool_):
        array = np.array([[1, 0], [1, 1]], dtype=dtype)
        assert con.tensorset("n", array) == "OK"
        back = con.tensorget("n")
        assert back.dtype == array.dtype and np.array_equal(back, array)
    with pytest.raises(ValueError):
        np.put(con.tensorget("n"), [0], [0])
    mutable = con.tensorget("n", as_numpy_mutable=True)
    np.put(mutable, [0], [0])
    with pytest.raises(TypeError):
        con.tensorset("n", np.array([1 + 2j]))


def test_model_store_get_execute_and_delete(
    con: Client, start_workers: WorkerFactory, iris: IrisModel
) -> None:
    start_workers(1)
    assert con.modelstore("m", "onnx", "CPU", scale_model(2.0), tag="v1.0") == "OK"
    meta = con.modelget("m", meta_only=True)
    assert meta == {"backend": "ONNX", "device": "CPU", "tag": "v1.0", "batchsize": 0,
                    "minbatchsize": 0, "minbatchtimeout": 0, "inputs": [], "outputs": []}
    assert con.modelget("m")["blob"] == scale_model(2.0)
    con.tensorset("a", (1, 2, 3), shape=(1, 3), dtype="float")
    # plain RedisAI keys, in no partition: read, run, written back
    assert con.modelexecute("m", inputs=["a"], outputs=["b"]) == "OK"
    assert con.tensorget("b", as_numpy=False)["values"] == [2.0, 4.0, 6.0]
    # keys under one partition tag: one MODELRUN, the worker reads and writes them
    con.tensorset("{inferis:0}:a", (1, 2, 3), shape=(1, 3), dtype="float")
    assert con.modelexecute("m", "{inferis:0}:a", "{inferis:0}:b") == "OK"
    np.testing.assert_array_equal(con.tensorget("{inferis:0}:b"), [[2.0, 4.0, 6.0]])
    # a model key as RedisAI users write them
    assert con.modelstore("model:iris", "ONNX", "cpu", iris.blob) == "OK"
    con.tensorset("features", iris.features[:3])
    con.modelexecute("model:iris", ["features"], ["label", "probabilities"])
    np.testing.assert_array_equal(con.tensorget("label"), iris.forest.predict(iris.features[:3]))
    assert con.modeldel("m") == "OK"
    with pytest.raises(redis.ResponseError, match="EMODEL"):
        con.modelget("m")
    with pytest.raises(redis.ResponseError, match="EMODEL"):
        con.modelexecute("m", ["a"], ["b"])


def test_infoget_counts_calls(con: Client, start_workers: WorkerFactory) -> None:
    start_workers(1)
    con.modelstore("m", "ONNX", "CPU", scale_model(1.0))
    first = con.infoget("m")
    assert first == {"key": "m", "type": "MODEL", "backend": "ONNX", "device": "CPU",
                     "tag": "", "duration": 0, "samples": 0, "calls": 0, "errors": 0}
    con.tensorset("a", (1, 2, 3), shape=(1, 3), dtype="float")
    con.modelexecute("m", ["a"], ["b"])
    con.modelexecute("m", ["a"], ["b"])
    deadline = time.monotonic() + 15
    while con.infoget("m")["calls"] < 2:  # workers flush counters every 2 s
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert con.infoget("m")["calls"] == 2
    assert con.inforeset("m") == "OK" and con.infoget("m") == first
    with pytest.warns(UserWarning):
        assert con.modelscan() == [["m", ""]]


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "caffe"}, "Backend not allowed"),
    ({"device": "tpu"}, "Device not allowed"),
    ({"minbatch": 2}, "Minbatch is not allowed without batch"),
    ({"batch": 4, "minbatchtimeout": 2}, "Minbatchtimeout is not allowed without minbatch"),
    ({"backend": "TF"}, "Require keyword arguments inputs and outputs for TF models"),
    ({"inputs": ["a"], "outputs": ["b"]}, "should not be specified for this backend"),
    ({"backend": "TFLITE"}, "TFLITE models are not served"),
])
def test_bad_model_arguments_raise_value_error_before_sending(
    con: Client, kwargs: dict, message: str
) -> None:
    args = {"key": "m", "backend": "ONNX", "device": "CPU", "data": b"x", **kwargs}
    with pytest.raises(ValueError, match=message):
        con.modelstore(**args)
    with pytest.raises(ValueError, match="Missing required arguments"):
        con.modelexecute("m", None, ["b"])  # type: ignore[arg-type]


SCRIPT = """
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    b = tensors[1]
    return a + b

def bar_variadic(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    l = tensors[1:]
    return a + l[0]

def scaled(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * float(args[0])
"""


def test_redisai_1_2_scripts_run_with_entry_points_and_args(
    con: Client, start_workers: WorkerFactory
) -> None:
    start_workers(1)
    assert con.scriptstore("test", "cpu", SCRIPT, ["bar", "bar_variadic", "scaled"],
                           tag="version1") == "OK"
    meta = con.scriptget("test", meta_only=True)
    assert meta["device"] == "cpu" and meta["tag"] == "version1" and "source" not in meta
    assert con.scriptget("test")["source"] == SCRIPT
    con.tensorset("a", (2, 3), dtype="float")
    con.tensorset("b", (2, 3), dtype="float")
    for function in ("bar", "bar_variadic"):
        assert con.scriptexecute("test", function, inputs=["a", "b"], outputs=["c"]) == "OK"
        assert con.tensorget("c", as_numpy=False)["values"] == [4.0, 6.0]
    con.scriptexecute("test", "scaled", inputs=["a"], args=["3"], outputs=["c"])
    assert con.tensorget("c", as_numpy=False)["values"] == [6.0, 9.0]
    con.scriptexecute("test", "scaled", inputs=["a"], args=["10"], outputs=["c"])
    assert con.tensorget("c", as_numpy=False)["values"] == [20.0, 30.0]
    with pytest.raises(redis.ResponseError, match="not an entry point"):
        con.scriptexecute("test", "nosuch", inputs=["a"], outputs=["c"])
    with pytest.raises(ValueError, match="Missing required arguments"):
        con.scriptexecute("test", None, inputs=["a"])  # type: ignore[arg-type]
    assert con.scriptdel("test") == "OK"
    with pytest.raises(redis.ResponseError, match="empty"):
        con.scriptget("test")


def test_dag_loads_runs_and_persists_like_redisai(
    con: Client, start_workers: WorkerFactory
) -> None:
    start_workers(1)
    con.modelstore("double", "ONNX", "CPU", scale_model(2.0, width=2))
    con.tensorset("a", (2, 3, 2, 3), shape=(2, 2), dtype="float")
    result = (con.dag(load="a").tensorset("b", (1, 1, 1, 1), shape=(2, 2), dtype="float")
              .modelexecute("double", ["a"], ["output"]).tensorget("output").execute())
    assert result[:2] == ["OK", "OK"]
    np.testing.assert_array_equal(result[2], [[4.0, 6.0], [4.0, 6.0]])
    assert not con.exists("output")  # not persisted
    result = con.dag(load=["a"], persist=["output"]).modelexecute(
        "double", ["a"], ["output"]).execute()
    assert result == ["OK"]
    np.testing.assert_array_equal(con.tensorget("output"), [[4.0, 6.0], [4.0, 6.0]])
    with pytest.warns(DeprecationWarning):
        con.dag()
    with pytest.raises(RuntimeError):
        con.dag(persist=["x"], readonly=True)
    with pytest.raises(redis.ResponseError, match="not loaded"):
        con.dag(load="a").tensorget("nowhere").execute()

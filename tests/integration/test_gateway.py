"""The Open Inference Protocol gateway, a real ``inferis gateway`` process, driven by
the real ``tritonclient[http]`` (JSON and binary tensors) and by plain HTTP for
what a client library hides (errors, echoed ids, digests)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from inferis.client import Client
from inferis.client.protocol import keys
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.models.introspect import store_model

from ..conftest import WorkerFactory, running_gateway
from ..models import IrisModel, scale_model


@pytest.fixture
def gateway(redis_server: EmbeddedRedis) -> Iterator[str]:
    with running_gateway(redis_server.url) as port:
        yield f"127.0.0.1:{port}"


def post(url: str, path: str, doc: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{url}{path}", json.dumps(doc).encode(),
                                     {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_tritonclient_health_metadata_and_infer_json_and_binary(
    gateway: str, client: Client, start_workers: WorkerFactory, iris: IrisModel
) -> None:
    start_workers(1)
    store_model(client, "iris", "onnx", iris.blob)  # as `inferis model store`: with its signature
    triton_client = triton.InferenceServerClient(url=gateway)
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("iris") and not triton_client.is_model_ready("nosuch")
    meta = triton_client.get_model_metadata("iris")
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert triton_client.get_server_metadata()["name"] == "inferis"

    x = iris.features[:5]
    expected = iris.reference(x)
    for binary in (False, True):
        tensor = triton.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput("label", binary_data=binary),
                   triton.InferRequestedOutput("probabilities", binary_data=binary)]
        result = triton_client.infer("iris", [tensor], outputs=outputs, request_id=f"req-{binary}")
        np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"],
                                   rtol=1e-6)
        response = result.get_response()
        assert response["id"] == f"req-{binary}" and response["model_version"] == "1"

    with pytest.raises(InferenceServerException, match=r"EINPUT|EARGS"):
        bad = triton.InferInput("X", [1, 3], "FP32")
        bad.set_data_from_numpy(np.ones((1, 3), np.float32))
        triton_client.infer("iris", [bad])
    # and the next caller is served
    tensor = triton.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(x[:1])
    assert triton_client.infer("iris", [tensor]).as_numpy("label").shape == (1,)


def test_version_in_the_path_is_a_number_an_alias_or_a_digest(
    gateway: str, client: Client, start_workers: WorkerFactory
) -> None:
    start_workers(1)
    v1 = client.modelstore("scale", "onnx", scale_model(1.0))
    v2 = client.modelstore("scale", "onnx", scale_model(3.0))
    client.alias_set("scale", "production", v1.version)
    doc = {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    for version, factor in ((str(v2.version), 3.0), ("production", 1.0), (v1.digest, 1.0),
                            (v2.digest, 3.0)):
        status, answer = post(gateway, f"/v2/models/scale/versions/{version}/infer", doc)
        assert status == 200, answer
        assert answer["outputs"][0]["data"] == [factor * v for v in (1, 2, 3)]
        assert answer["parameters"]["digest"] in (v1.digest, v2.digest)
    status, answer = post(gateway, "/v2/models/scale/infer", {**doc, "id": "order-17"})
    assert status == 200 and answer["id"] == "order-17" and answer["model_version"] == "2"


def test_an_echoed_id_is_what_feedback_joins_on(
    gateway: str, client: Client, start_workers: WorkerFactory, iris: IrisModel, r: redis.Redis
) -> None:
    start_workers(1)
    client.modelstore("iris", "onnx", iris.blob)
    client.alias_set("iris", "production", 1)
    doc = {"id": "txn-42", "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                                       "data": iris.features[0].tolist()}]}
    status, answer = post(gateway, "/v2/models/iris/versions/production/infer", doc)
    assert status == 200 and answer["id"] == "txn-42"
    # the worker logs the prediction just after answering: feedback sent before that
    # would find nothing to join yet (and say "unknown")
    logged = keys.model_key("iris", "p:txn-42")
    deadline = time.monotonic() + 10
    while not r.exists(logged) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.feedback("iris", "txn-42", 0.0) == ("joined", 1)


@pytest.mark.parametrize("doc, status, code", [
    ({"inputs": [{"name": "X", "shape": [1, 3], "datatype": "STRING", "data": [1]}]}, 400,
     "EARGS"),
    ({"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}, 400,
     "EARGS"),
    ({"inputs": "no"}, 400, "EARGS"),
    ({"inputs": [{"name": "Z", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, 400,
     "EINPUT"),
])
def test_bad_requests_get_a_clear_error(
    gateway: str, client: Client, start_workers: WorkerFactory, doc: dict, status: int, code: str
) -> None:
    start_workers(1)
    client.modelstore("scale", "onnx", scale_model(1.0))
    got, answer = post(gateway, "/v2/models/scale/infer", doc)
    assert got == status and answer["error"].startswith(code), answer
    got, answer = post(gateway, "/v2/models/nosuch/infer", doc)
    assert got in (400, 404)


def test_the_kserve_v2_rest_client_gets_the_same_answers(
    gateway: str, client: Client, start_workers: WorkerFactory, iris: IrisModel
) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    start_workers(1)
    store_model(client, "iris", "onnx", iris.blob)
    client.alias_set("iris", "production", 1)
    x = iris.features[10:16]
    expected = iris.reference(x)
    base = f"http://{gateway}"

    async def scenario() -> list:
        rest = InferenceRESTClient(config=RESTConfig(protocol="v2", timeout=20))
        assert await rest.is_server_live(base) and await rest.is_server_ready(base)
        assert await rest.is_model_ready(base, "iris")
        answers = []
        for binary in (False, True):
            tensor = InferInput("X", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest("iris", [tensor], request_id=f"k-{binary}",
                                   model_version="production")
            answers.append(await rest.infer(base, request, model_name="iris"))
        return answers

    for response in asyncio.run(scenario()):
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        np.testing.assert_array_equal(outputs["label"], expected["label"])
        np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], rtol=1e-6)
        assert response.id.startswith("k-")

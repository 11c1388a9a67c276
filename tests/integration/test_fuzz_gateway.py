"""Hostile input to the Open Inference Protocol gateway, a real ``inferis gateway``
process: random and malformed JSON, wrong types, huge or mismatched shapes, bodies
that are not JSON, binary-extension lengths that lie, unknown models and model
names that try to climb out of their path. Each gets a 4xx answer in the
protocol's JSON error form (never a 500, never a traceback), and the gateway
goes on serving."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferis.client import Client
from inferis.engine.local.embedded import EmbeddedRedis

from ..conftest import WorkerFactory, running_gateway
from ..models import scale_model

HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture
def gateway(redis_server: EmbeddedRedis) -> Iterator[tuple[str, int]]:
    with running_gateway(redis_server.url) as port:
        yield "127.0.0.1", port


class Http:
    """One kept-alive connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=30)

    def send(self, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body, headers or {})
                response = self.conn.getresponse()
                return response.status, response.getheader("content-type", ""), response.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()  # a fresh connection for the retry, or the next request
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


VALID = {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}

JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
              st.floats(allow_nan=False), st.text(max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(["name", "shape", "datatype", "data", "parameters",
                                         "binary_data_size", "binary_data", "id", "inputs",
                                         "outputs", "unit"]), children, max_size=5)),
    max_leaves=20,
)
DATATYPE = st.sampled_from(["FP32", "FP64", "INT64", "INT8", "UINT8", "BOOL", "FP16", "BYTES",
                            "BF16", "fp32", "", "X" * 300])
DIMENSION = st.one_of(st.integers(0, 4), st.integers(-3, 2**70), st.just(2**62),
                      st.booleans(), st.floats(0, 3), st.text(max_size=2))
SHAPE = st.one_of(
    st.lists(DIMENSION, max_size=10),
    st.sampled_from([[2**40, 2**40], [2**32, 2**32], [0, 2**62], [1] * 70, [10**30], [1, 3]]),
    JSON_VALUE,
)
DATA = st.one_of(
    st.lists(st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3),
                       st.booleans(), st.none()), max_size=8),
    st.lists(st.lists(st.floats(-10, 10), max_size=4), max_size=3),
    JSON_VALUE,
)
PARAMETERS = st.one_of(
    st.fixed_dictionaries({}, optional={
        "binary_data_size": st.one_of(st.integers(-5, 64), JSON_VALUE),
        "binary_data": st.booleans(), "binary_data_output": JSON_VALUE, "unit": JSON_VALUE}),
    JSON_VALUE,
)
INPUT = st.fixed_dictionaries(
    {"name": st.sampled_from(["X", "", "Y", "x" * 300]), "shape": SHAPE, "datatype": DATATYPE},
    optional={"data": DATA, "parameters": PARAMETERS},
)
OUTPUT = st.one_of(st.fixed_dictionaries({"name": st.sampled_from(["Y", "Z", ""])},
                                         optional={"parameters": PARAMETERS}), JSON_VALUE)
DOCUMENT = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(INPUT, max_size=3), JSON_VALUE)},
    optional={"outputs": st.one_of(st.lists(OUTPUT, max_size=3), JSON_VALUE),
              "parameters": PARAMETERS,
              "id": st.one_of(st.sampled_from(["ok-1", "", "a b", "x" * 65, "../x"]), JSON_VALUE)},
)
# The model most requests name (so they reach a worker), and names that try to climb
# out of the path, hide a NUL or a newline, or are far too long.
MODEL_PATH = st.sampled_from(["scale"] * 12 + [
    "nosuch", "..", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "scale%2F..%2F..", "scale%00",
    "scale%0A", "%252e%252e", "a" * 300, "sc%20ale", "-scale", "~root", "scale;rm"])
VERSION_PATH = st.sampled_from([""] * 6 + ["/versions/1", "/versions/production"] * 2 + [
    "/versions/99", "/versions/..", "/versions/..%2F..", "/versions/%00", "/versions/-1",
    "/versions/" + "9" * 40, "/versions/latest", "/versions/" + "ab" * 32])


@st.composite
def near_valid(draw: st.DrawFn) -> dict:
    """A request the gateway parses, shaped or typed wrongly for the model (X: FP32
    [rows, 3]): rows and columns, datatype, names, extra inputs, outputs asked."""
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    count = 1
    for d in shape:
        count *= d
    datatype = draw(st.sampled_from(["FP32", "FP32", "FP64", "INT64", "BOOL", "UINT8", "FP16"]))
    values = draw(st.lists(st.integers(0, 1) if datatype in ("BOOL", "UINT8") else
                           st.floats(-1e3, 1e3), min_size=count, max_size=count))
    inputs = [{"name": draw(st.sampled_from(["X", "X", "Y", "x"])), "shape": shape,
               "datatype": datatype, "data": values}]
    if draw(st.booleans()):
        inputs.append({"name": "W", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]})
    doc: dict = {"inputs": inputs}
    if draw(st.booleans()):
        doc["outputs"] = [{"name": draw(st.sampled_from(["Y", "Z", "X"])),
                           "parameters": {"binary_data": draw(st.booleans())}}]
    if draw(st.booleans()):
        doc["id"] = draw(st.sampled_from(["req-1", "a" * 64, "a" * 65, "é"]))
    if draw(st.booleans()):
        doc["parameters"] = {"unit": draw(st.sampled_from(["u1", "", "u" * 257, 7]))}
    return doc


@st.composite
def hostile_request(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    """method, path, body and headers of one request."""
    path = f"/v2/models/{draw(MODEL_PATH)}{draw(VERSION_PATH)}/infer"
    kind = draw(st.sampled_from(["json", "json", "json", "binary", "bytes", "text", "deep",
                                 "traversal", "method", "near", "near"]))
    headers = {"content-type": draw(st.sampled_from(["application/json",
                                                     "application/octet-stream", "text/plain"]))}
    if kind == "bytes":
        return "POST", path, draw(st.binary(max_size=200)), headers
    if kind == "text":
        text = draw(st.sampled_from(["", "{", "null", "[]", "{}", "NaN", '{"inputs": 1}',
                                     "\ufeff{}", "inputs=1", '{"inputs": [1, 2]}']))
        return "POST", path, text.encode(), headers
    if kind == "deep":  # nesting past what a recursive parser takes
        depth = draw(st.sampled_from([500, 5_000, 100_000]))
        inner = b"[" * depth + b"]" * depth
        return "POST", path, b'{"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", ' \
            b'"data": ' + inner + b"}]}", headers
    if kind == "traversal":
        hostile = draw(st.sampled_from([
            "/v2/models/../../etc/passwd/infer", "/v2/models/scale/../../../etc/infer",
            "/v2/models//infer", "/v2/models/scale/versions//infer", "/v2/../v2/models/x/infer",
            "/v2/models/scale/versions/1/../../nosuch/infer", "/../../etc/passwd",
            "/v2/models/..%2f..%2f..%2fetc/ready", "/v2/models/%2e%2e%2f%2e%2e/versions/1"]))
        return draw(st.sampled_from(["POST", "GET"])), hostile, json.dumps(VALID).encode(), headers
    if kind == "method":
        return draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH"])), path, b"{}", headers
    if kind == "near":  # well formed, so it reaches a worker: wrong for the model
        return "POST", path, json.dumps(draw(near_valid())).encode(), headers
    doc = draw(DOCUMENT)
    head = json.dumps(doc).encode()
    if kind == "json":
        return "POST", path, head, headers
    # the binary extension: a JSON header, then raw bytes, with a length that may lie
    tail = draw(st.binary(max_size=64))
    length = draw(st.one_of(
        st.just(str(len(head))), st.integers(-10, len(head) + len(tail) + 10).map(str),
        st.sampled_from(["", " ", " 7 ", "abc", "1e3", "0x10", "1_0", "9" * 5000, str(2**64),
                         "-0", "\xb2"])))
    headers[HEADER_LENGTH] = length
    return "POST", path, head + tail, headers


def _assert_json_refusal(status: int, content_type: str, body: bytes, sent: object) -> None:
    request = repr(sent)[:400]  # enough to tell it, short enough to read
    assert status < 500, (status, body[:300], request)
    assert b"Traceback" not in body and b'File "' not in body, (body[:300], request)
    assert content_type.startswith("application/json"), (status, content_type, body[:200])
    answer = json.loads(body)
    if status == 200:  # the fuzzer wrote a valid request: a valid answer
        assert isinstance(answer.get("outputs"), list), answer
        return
    assert 400 <= status < 500, (status, answer, request)
    assert isinstance(answer.get("error"), str) and answer["error"], answer


def test_hostile_requests_get_a_4xx_json_error_and_serving_goes_on(
    gateway: tuple[str, int], client: Client, start_workers: WorkerFactory
) -> None:
    start_workers(1)
    client.modelstore("scale", "onnx", scale_model(2.0))
    client.alias_set("scale", "production", 1)
    http = Http(*gateway)

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(request=hostile_request())
    def fuzz(request: tuple[str, str, bytes, dict[str, str]]) -> None:
        _assert_json_refusal(*http.send(*request), request)

    fuzz()
    status, _, body = http.send("POST", "/v2/models/scale/infer", json.dumps(VALID).encode(),
                                {"content-type": "application/json"})
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [2.0, 4.0, 6.0]


@pytest.mark.parametrize("body, headers, message", [
    # numpy's int64 product wraps: 2**32 * 2**32 counted as 0 elements, then reshape failed
    (json.dumps({"inputs": [{"name": "X", "shape": [2**32, 2**32], "datatype": "FP32",
                             "data": []}]}), {}, "exceeds the limit"),
    (json.dumps({"inputs": [{"name": "X", "shape": [10**30], "datatype": "FP32",
                             "data": []}]}), {}, "exceeds the limit"),
    (json.dumps({"inputs": [{"name": "X", "shape": [1] * 70, "datatype": "FP32",
                             "data": [1]}]}), {}, "rank 70 exceeds the limit of 8"),
    # an integer out of the datatype's range raised OverflowError
    (json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "INT8", "data": [300]}]}),
     {}, "does not fit INT8"),
    # parameters that are not objects: AttributeError on .get
    (json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1],
                             "parameters": [1]}]}), {}, "parameters must be an object"),
    (json.dumps({"inputs": [], "outputs": [{"name": "Y", "parameters": 3}]}), {},
     "parameters must be an object"),
    (json.dumps({"inputs": [], "outputs": 5}), {}, "outputs must be a list"),
    # deep nesting: RecursionError in the JSON parser
    ('{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}", {}, "nested too deeply"),
    (json.dumps(VALID), {HEADER_LENGTH: "9" * 5000}, "must be an integer"),
    (json.dumps(VALID), {HEADER_LENGTH: "-1"}, "beyond the body"),
])
def test_what_fuzzing_found_is_refused_clearly(
    gateway: tuple[str, int], body: str, headers: dict[str, str], message: str
) -> None:
    status, content_type, raw = Http(*gateway).send(
        "POST", "/v2/models/scale/infer", body.encode(), {"content-type": "application/json",
                                                          **headers})
    assert status == 400 and content_type == "application/json", (status, raw[:300])
    error = json.loads(raw)["error"]
    assert error.startswith("EARGS") and message in error, error


def test_unknown_routes_and_methods_answer_in_json(gateway: tuple[str, int]) -> None:
    http = Http(*gateway)
    for method, path, status in (("GET", "/v2/models/../../etc/passwd", 404),
                                 ("GET", "/nothing", 404),
                                 ("GET", "/v2/models/scale/infer", 405),
                                 ("GET", "/v2/models/..%2F..%2Fetc", 404)):
        got, content_type, body = http.send(method, path)
        assert (got, content_type) == (status, "application/json"), (path, got, body)
        assert json.loads(body)["error"], body

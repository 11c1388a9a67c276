"""The scikit-learn backend through Redis and real workers.

Every model is fitted here on generated data; results must equal the
estimator's own in-process output (the same code path runs in the worker),
and the skl2onnx fast path must agree within float32 precision.

Most tests share one Redis and two ordinary workers (module scope): each
worker imports skops once, which takes seconds. Tests that need other
workers (trusting pickle, or an operator's skops types) start their own.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import redis
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from inferis.client import Client, InputError, ModelInfo, UnsafeModelError
from inferis.engine.backends.base import BackendOptions
from inferis.engine.backends.sklearn import SklearnBackend
from inferis.engine.config import WorkerConfig
from inferis.engine.local.embedded import EmbeddedRedis
from inferis.engine.local.supervisor import WorkerPool
from inferis.engine.serving.worker import Worker
from inferis.lua import ensure_library

from ..conftest import consumer_names, wait_for_consumers

Fitted = dict[str, tuple[Any, np.ndarray]]


def _skops(obj: Any) -> bytes:
    import skops.io as sio  # slow: imported only by the tests that need it

    return sio.dumps(obj)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A client of a private Redis served by two ordinary workers."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    conn = redis.Redis.from_url(server.url)
    ensure_library(conn)
    pool = WorkerPool(server.url, 2, ["--log-level", "WARNING"])
    pool.start()
    try:
        wait_for_consumers(conn, set(), 2)
        with Client(server.url, timeout_ms=30_000) as client:
            yield client
    finally:
        conn.close()
        pool.stop(grace_s=10)
        server.stop()


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    """name -> (fitted estimator, rows to predict); classifiers have 3 classes."""
    xc, yc = make_classification(
        n_samples=240, n_features=6, n_informative=4, n_classes=3, random_state=0
    )
    xr, yr = make_regression(n_samples=200, n_features=5, noise=1.0, random_state=0)
    return {
        "forest": (RandomForestClassifier(n_estimators=20, random_state=0).fit(xc, yc), xc),
        "hgb": (HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(xc, yc), xc),
        "gb": (GradientBoostingClassifier(n_estimators=20, random_state=0).fit(xc, yc), xc),
        "linear": (LinearRegression().fit(xr, yr), xr),
    }


def _check_classifier(out: dict[str, np.ndarray], model: Any, x: np.ndarray, rtol: float) -> None:
    assert sorted(out) == ["label", "probabilities"]
    assert out["label"].shape == (len(x),)
    assert np.array_equal(out["label"], model.predict(x))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(x), rtol=rtol, atol=0)


def test_skops_models_match_the_estimators(shared: Client, fitted: Fitted) -> None:
    for name, (model, x) in fitted.items():
        shared.modelstore(name, "sklearn", _skops(model), format="skops")
        batch = x[::3]
        out = shared.predict(name, {"X": batch})
        if name == "linear":
            assert list(out) == ["variable"]
            assert out["variable"].shape == (len(batch), 1)  # as skl2onnx shapes it
            np.testing.assert_allclose(out["variable"][:, 0], model.predict(batch), rtol=1e-12)
        else:
            assert out["label"].dtype == np.int64
            _check_classifier(out, model, batch, rtol=1e-12)
    # No FORMAT means skops; integer features are accepted and converted by sklearn.
    model, x = fitted["linear"]
    shared.modelstore("linear-default", "sklearn", _skops(model))
    ints = np.rint(x[:5]).astype(np.int32)
    out = shared.predict("linear-default", [ints])
    np.testing.assert_allclose(out["variable"][:, 0], model.predict(ints), rtol=1e-12)


def test_skl2onnx_fast_path_gives_the_same_outputs(shared: Client, fitted: Fitted) -> None:
    from skl2onnx import to_onnx

    # Not "hgb": the installed skl2onnx cannot convert HistGradientBoostingClassifier.
    for name in ("forest", "gb", "linear"):
        model, x = fitted[name]
        x32 = x[::3].astype(np.float32)
        options = {id(model): {"zipmap": False}} if name != "linear" else None
        onx = to_onnx(model, x32[:1], options=options)
        shared.modelstore(f"{name}-onnx", "onnx", onx.SerializeToString())
        out = shared.predict(f"{name}-onnx", {"X": x32})
        if name == "linear":
            assert list(out) == ["variable"] and out["variable"].shape == (len(x32), 1)
            np.testing.assert_allclose(out["variable"][:, 0], model.predict(x32), rtol=1e-5)
        else:
            _check_classifier(out, model, x32, rtol=1e-5)


def _documents(count: int, seed: int) -> tuple[list[str], list[str]]:
    """Short generated texts about two topics; labels are the topic names."""
    rng = np.random.default_rng(seed)
    words = {
        "weather": ["rain", "sun", "cloud", "wind", "storm", "snow", "forecast", "cold"],
        "sport": ["goal", "match", "team", "score", "league", "player", "coach", "cup"],
    }
    common = ["the", "a", "today", "was", "very", "really"]
    texts, labels = [], []
    for _ in range(count):
        topic = str(rng.choice(list(words)))
        picked = list(rng.choice(words[topic], 4)) + list(rng.choice(common, 2))
        texts.append(" ".join(rng.permutation(picked)))
        labels.append(topic)
    return texts, labels


def test_text_pipeline_takes_strings_and_returns_string_labels(shared: Client) -> None:
    texts, labels = _documents(120, seed=1)
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, labels)
    shared.modelstore("topics", "sklearn", _skops(pipe), format="skops")
    queries, _ = _documents(25, seed=2)
    out = shared.predict("topics", {"X": np.array(queries, dtype=object)})
    assert out["label"].dtype == object
    assert out["label"].tolist() == pipe.predict(queries).tolist()
    assert set(out["label"]) == {"weather", "sport"}
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(queries), rtol=1e-12)
    with pytest.raises(InputError, match="input X: expected dtype str"):
        shared.predict("topics", {"X": np.zeros(3)})


def test_wrong_number_of_features_names_the_input(
    shared: Client, fitted: Fitted
) -> None:
    model, x = fitted["forest"]
    shared.modelstore("forest", "sklearn", _skops(model))
    with pytest.raises(InputError, match=r"input X: dimension 1 must be 6 .*got shape \[4, 5\]"):
        shared.predict("forest", {"X": x[:4, :5]})
    with pytest.raises(InputError, match="input X: expected rank 2"):
        shared.predict("forest", {"X": x[0]})


class _TouchOnLoad:
    """Unpickling this creates a file: proof of whether a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.path,))


def test_pickle_and_joblib_are_refused_by_ordinary_workers(
    shared: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    blob = pickle.dumps(_TouchOnLoad(marker))
    shared.modelstore("evil", "sklearn", blob, format="pickle")
    with pytest.raises(UnsafeModelError, match=r"arbitrary code.*--trust-unsafe-formats"):
        shared.predict("evil", {"X": np.zeros((1, 2))})
    joblib_blob = io.BytesIO()
    joblib.dump(_TouchOnLoad(marker), joblib_blob)
    shared.modelstore("evil-joblib", "sklearn", joblib_blob.getvalue(), format="joblib")
    with pytest.raises(UnsafeModelError, match=r"'joblib'.*--trust-unsafe-formats"):
        shared.predict("evil-joblib", {"X": np.zeros((1, 2))})
    assert not marker.exists()


def test_the_backend_refuses_pickle_on_its_own(tmp_path: Path) -> None:
    """Second line of defence: the backend checks even if a caller skipped the cache."""
    marker = tmp_path / "unpickled"
    blob = pickle.dumps(_TouchOnLoad(marker))
    for fmt in ("pickle", "joblib"):
        info = ModelInfo(
            name="evil", version=1, digest="", backend="sklearn", format=fmt, device="CPU",
            size=len(blob),
        )
        with pytest.raises(UnsafeModelError, match="--trust-unsafe-formats"):
            SklearnBackend().load(blob, info, BackendOptions())
    assert not marker.exists()


def test_pickle_and_joblib_are_served_by_a_trusting_worker(
    client: Client, start_workers, fitted: Fitted
) -> None:
    start_workers(1, "--trust-unsafe-formats")
    model, x = fitted["forest"]
    client.modelstore("forest-pickle", "sklearn", pickle.dumps(model), format="pickle")
    joblib_blob = io.BytesIO()
    joblib.dump(model, joblib_blob)
    client.modelstore("forest-joblib", "sklearn", joblib_blob.getvalue(), format="joblib")
    for name in ("forest-pickle", "forest-joblib"):
        _check_classifier(client.predict(name, {"X": x[:40]}), model, x[:40], rtol=1e-12)


def double(x: np.ndarray) -> np.ndarray:
    """A function skops does not know: storing it makes the file need trust."""
    return x * 2


def _custom_function_model() -> tuple[Any, np.ndarray]:
    x, y = make_regression(n_samples=60, n_features=3, noise=0.5, random_state=3)
    model = make_pipeline(FunctionTransformer(double), LinearRegression()).fit(x, y)
    return model, x


def _memmap_skops_blob(target: Path) -> bytes:
    """A hand-written skops file that would build numpy.memmap(target, mode="w+")."""
    args = _skops((str(target), "uint8", "w+", 0, (16,)))
    content = json.loads(zipfile.ZipFile(io.BytesIO(args)).read("schema.json"))
    schema = {
        "__class__": "memmap", "__module__": "numpy", "__loader__": "ConstructorFromReduceNode",
        "content": content, "protocol": content["protocol"],
        "_skops_version": content["_skops_version"],
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
    return out.getvalue()


def test_skops_types_outside_the_trusted_packages_are_refused(
    shared: Client, tmp_path: Path
) -> None:
    model, x = _custom_function_model()
    shared.modelstore("custom", "sklearn", _skops(model))
    with pytest.raises(UnsafeModelError) as caught:
        shared.predict("custom", {"X": x[:3]})
    assert f"does not trust: {__name__}.double." in caught.value.message
    assert f"skops_trusted={__name__}.double" in caught.value.message
    # numpy is a trusted package, but not its classes that write files.
    target = tmp_path / "written-by-model"
    shared.modelstore("memmap", "sklearn", _memmap_skops_blob(target))
    with pytest.raises(UnsafeModelError, match=r"does not trust: numpy\.memmap\."):
        shared.predict("memmap", {"X": x[:3]})
    assert not target.exists()


def _serve(config: WorkerConfig) -> None:
    Worker(config).run()


def test_types_an_operator_trusts_are_loaded(
    client: Client, redis_server: EmbeddedRedis, r: redis.Redis
) -> None:
    # Started from its config in a process that can import this module's function.
    config = WorkerConfig(
        redis_url=redis_server.url, backend_option=[f"skops_trusted={__name__}.double"]
    )
    before = consumer_names(r)
    worker = multiprocessing.get_context("spawn").Process(target=_serve, args=(config,))
    worker.start()
    try:
        wait_for_consumers(r, before, 1)
        model, x = _custom_function_model()
        client.modelstore("custom", "sklearn", _skops(model))
        out = client.predict("custom", {"X": x})
        np.testing.assert_allclose(out["variable"][:, 0], model.predict(x), rtol=1e-12)
    finally:
        worker.terminate()  # SIGTERM: the worker finishes its batch and exits
        worker.join(15)
        if worker.is_alive():
            worker.kill()
            worker.join()

"""The TensorFlow backend end to end: SavedModels and frozen GraphDefs served through Redis.

Every model is built here and run in-process as well; the engine's answer must
match the framework's own.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inferis.client import BackendError, Client, InputError, ModelInfo
from inferis.engine.backends.base import BackendOptions

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)

from inferis.engine.backends.tensorflow import (
    TensorFlowBackend,
    pack_saved_model,
)

from ..conftest import WorkerFactory


def _tar_gz_in_folder(directory: Path, folder: str) -> bytes:
    """A gzip tar with the SavedModel inside one top-level folder (what `tar czf` of it gives)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(directory, arcname=folder)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def keras_mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Callable]:
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((4,), name="features"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3),
    ])
    directory = tmp_path_factory.mktemp("keras") / "mlp"
    model.export(str(directory), verbose=False)
    return directory, lambda x: model(x).numpy()


class TextStats(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = tf.Variable(2.5)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="text"),
        tf.TensorSpec([None], tf.float32, name="x"),
    ])
    def stats(self, text: tf.Tensor, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            "length": tf.strings.length(text),
            "scaled": x * self.scale,
            "upper": tf.strings.upper(text),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}


@pytest.fixture(scope="module")
def text_stats(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TextStats]:
    module = TextStats()
    directory = tmp_path_factory.mktemp("text") / "stats"
    tf.saved_model.save(
        module, str(directory), signatures={"serving_default": module.double,
                                            "text_stats": module.stats},
    )
    return directory, module


def _frozen_graph(seed: int) -> tuple[bytes, Callable]:
    """A float and a string path: relu(x @ w) and the byte length of each word."""
    weights = tf.Variable(np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32))

    @tf.function(input_signature=[
        tf.TensorSpec([None, 4], tf.float32, name="x"),
        tf.TensorSpec([None], tf.string, name="words"),
    ])
    def fn(x: tf.Tensor, words: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.nn.relu(tf.matmul(x, weights)), tf.strings.length(words)

    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    assert [t.name for t in frozen.outputs] == ["Identity:0", "Identity_1:0"]
    return frozen.graph.as_graph_def().SerializeToString(), fn


def test_keras_savedmodel_matches_in_process(
    client: Client, start_workers: WorkerFactory, keras_mlp, tmp_path: Path
) -> None:
    directory, model = keras_mlp
    blob = pack_saved_model(directory)
    # Same files elsewhere, with other mtimes: the same bytes, so the same digest.
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert pack_saved_model(copy) == blob
    (copy / "variables" / "extra.txt").write_text("changed")
    assert pack_saved_model(copy) != blob

    start_workers(1)
    client.modelstore("mlp", "tensorflow", blob, format="savedmodel")
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = client.predict("mlp", {"features": x})
    assert list(out) == ["output_0"]
    assert out["output_0"].dtype == np.float32
    np.testing.assert_allclose(out["output_0"], model(x), rtol=1e-6, atol=1e-6)
    positional = client.predict("mlp", [x[:1]])
    np.testing.assert_allclose(positional["output_0"], model(x[:1]), rtol=1e-6, atol=1e-6)


def test_string_signature_chosen_by_name(
    client: Client, start_workers: WorkerFactory, text_stats
) -> None:
    directory, module = text_stats
    start_workers(1)
    # gzip, with the files inside one top-level folder
    client.modelstore(
        "stats", "tensorflow", _tar_gz_in_folder(directory, "stats"),
        extra={"signature": "text_stats"},
    )
    text = np.array(["ab", "héllo", "", "Ω mega"], dtype=object)
    x = np.array([1.0, -2.0, 0.5, 3.25], dtype=np.float32)
    out = client.predict("stats", {"text": text, "x": x})
    expected = module.stats(tf.constant(text), tf.constant(x))
    assert sorted(out) == ["length", "scaled", "upper"]
    assert out["length"].dtype == np.int32
    assert np.array_equal(out["length"], expected["length"].numpy())
    assert out["length"].tolist() == [2, 6, 0, 7]  # bytes, not characters
    np.testing.assert_allclose(out["scaled"], expected["scaled"].numpy(), rtol=1e-7)
    assert out["upper"].dtype == object
    assert out["upper"].tolist() == [s.decode() for s in expected["upper"].numpy().tolist()]

    # The same model under the default signature is another contract entirely.
    client.modelstore("double", "tensorflow", pack_saved_model(directory))
    assert client.predict("double", [x])["y"].tolist() == (x * 2).tolist()

    client.modelstore(
        "stats_typo", "tensorflow", gzip.compress(pack_saved_model(directory)),
        extra={"signature": "text-stats"},
    )
    with pytest.raises(
        BackendError, match=r"no signature 'text-stats'; available: serving_default, text_stats"
    ):
        client.predict("stats_typo", {"text": text, "x": x})


def test_signature_mismatch_is_an_input_error(
    client: Client, start_workers: WorkerFactory, keras_mlp
) -> None:
    directory, model = keras_mlp
    start_workers(1)
    client.modelstore("mlp", "tensorflow", pack_saved_model(directory))
    with pytest.raises(InputError, match=r"input features: expected dtype float32, got float64"):
        client.predict("mlp", {"features": np.zeros((2, 4))})
    with pytest.raises(InputError, match=r"input features: dimension 1 must be 4"):
        client.predict("mlp", {"features": np.zeros((2, 5), np.float32)})
    with pytest.raises(InputError, match=r"input features: expected rank 2"):
        client.predict("mlp", {"features": np.zeros(4, np.float32)})
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(client.predict("mlp", [x])["output_0"], model(x), rtol=1e-6)


def test_frozen_graphdef_with_declared_tensors(
    client: Client, start_workers: WorkerFactory
) -> None:
    blob, fn = _frozen_graph(seed=1)
    start_workers(1)
    # Names with and without ":0"; the outputs are reported as declared.
    client.modelstore(
        "frozen", "tensorflow", blob, format="graphdef",
        inputs=[{"name": "x", "dtype": "float32", "shape": [-1, 4]},
                {"name": "words:0", "dtype": "str", "shape": [-1]}],
        outputs=[{"name": "Identity", "dtype": "float32", "shape": [-1, 3]},
                 {"name": "Identity_1:0", "dtype": "int32", "shape": [-1]}],
    )
    x = np.random.default_rng(2).standard_normal((6, 4)).astype(np.float32)
    words = np.array(["a", "bb", "ééé"], dtype=object)
    out = client.predict("frozen", {"x": x, "words:0": words})
    relu, lengths = fn(tf.constant(x), tf.constant(words))
    np.testing.assert_allclose(out["Identity"], relu.numpy(), rtol=1e-6, atol=1e-7)
    assert np.array_equal(out["Identity_1:0"], lengths.numpy())
    with pytest.raises(InputError, match=r"input x: dimension 1 must be 4"):
        client.predict("frozen", {"x": x[:, :3], "words:0": words})

    # Other graphs: the loaded-model cache is keyed by the blob's digest.
    undeclared, _ = _frozen_graph(seed=2)
    client.modelstore("bare", "tensorflow", undeclared, format="graphdef")
    with pytest.raises(BackendError, match="INPUT and OUTPUT declarations are required"):
        client.predict("bare", [x, words])
    misnamed, _ = _frozen_graph(seed=3)
    client.modelstore(
        "misnamed", "tensorflow", misnamed, format="graphdef",
        inputs=[{"name": "x", "dtype": "float32", "shape": [-1, 4]},
                {"name": "words", "dtype": "str", "shape": [-1]}],
        outputs=[{"name": "relu_out", "dtype": "float32", "shape": [-1, 3]}],
    )
    with pytest.raises(BackendError, match=r"OUTPUT 'relu_out' is not a tensor of the graph"):
        client.predict("misnamed", [x, words])


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        good = tarfile.TarInfo("saved_model.pb")
        archive.addfile(good, io.BytesIO(b""))
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def test_unsafe_or_broken_archives_are_refused(
    client: Client, start_workers: WorkerFactory, keras_mlp
) -> None:
    directory, model = keras_mlp
    start_workers(1)
    escape = f"evil-{os.urandom(4).hex()}"
    link = tarfile.TarInfo("variables")
    link.type, link.linkname = tarfile.SYMTYPE, "../../etc"
    cases = {
        "dotdot": (_tar_with(tarfile.TarInfo(f"../{escape}"), b"x"), r"absolute path or '\.\.'"),
        "absolute": (_tar_with(tarfile.TarInfo(f"/{escape}"), b"x"), r"absolute path or '\.\.'"),
        "symlink": (_tar_with(link), r"links to '\.\./\.\./etc', outside the model directory"),
        "garbage": (b"not a tar archive" * 40, r"takes a tar archive \(plain or gzip\)"),
    }
    for name, (blob, message) in cases.items():
        client.modelstore(name, "tensorflow", blob)
        with pytest.raises(BackendError, match=message):
            client.predict(name, [np.ones((1, 4), np.float32)])
    assert not (Path(tempfile.gettempdir()) / escape).exists()

    client.modelstore("mlp", "tensorflow", pack_saved_model(directory))  # still serving
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(client.predict("mlp", [x])["output_0"], model(x), rtol=1e-6)


def test_close_removes_the_unpacked_directory(
    keras_mlp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, model = keras_mlp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    blob = pack_saved_model(directory)
    info = ModelInfo(
        name="mlp", version=1, digest="", backend="tensorflow", format="", device="CPU",
        size=len(blob),
    )
    loaded = TensorFlowBackend().load(blob, info, BackendOptions())
    assert len(list(tmp_path.iterdir())) == 1
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(loaded.run({"features": x})["output_0"], model(x), rtol=1e-6)
    loaded.close()
    assert list(tmp_path.iterdir()) == []

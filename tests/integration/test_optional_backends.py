"""Each backend is optional: a worker without a framework still serves the others,
and a request for the missing one is an error naming the extra to install."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from inferis.client import BackendUnavailableError, Client

from .. import models


@pytest.mark.parametrize(("package", "backend", "extra"), [
    ("torch", "torch", "torch"),
    ("tensorflow", "tensorflow", "tensorflow"),
    ("skops", "sklearn", "sklearn"),
])
def test_a_missing_framework_is_an_error_naming_its_extra(
    client: Client, start_workers, tmp_path: Path, package: str, backend: str, extra: str
) -> None:
    # A package of that name that fails to import: the worker is as if it lacked it.
    hidden = tmp_path / "hide" / package
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        f"raise ImportError('{package} is not installed here', name='{package}')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "hide"))
    start_workers(1, env=env)
    client.modelstore("needs-it", backend, b"any bytes: never loaded")
    client.modelstore("scale", "onnx", models.scale_model(2.0))
    with pytest.raises(BackendUnavailableError, match=rf"pip install 'inferis\[{extra}\]'"):
        client.predict("needs-it", [np.ones(2, np.float32)])
    assert client.predict("scale", [np.ones((1, 3), np.float32)])["Y"].tolist() == [[2.0] * 3]

"""A BentoML service with one batchable API per model (``bentoml serve``).

A batchable API takes a single argument, so a model with several inputs gets
them side by side in one array, split again here (BentoML's docs suggest a
composite input plus a wrapper service for that, which would add a hop).
"""

import bentoml
import numpy as np
from onnx_session import config, load_all

CONFIG = config()


BATCHABLE = bool(CONFIG.get("batchable", True))


def _endpoint(name: str, primary: str):
    def predict(self, x: np.ndarray) -> np.ndarray:
        # A batchable API returns one array, split by BentoML along the batch dimension.
        return self.models[name].run_joined(x)[primary]

    predict.__name__ = name
    if not BATCHABLE:
        return bentoml.api(predict, route=f"/{name}")
    return bentoml.api(
        predict, batchable=True, batch_dim=0, max_batch_size=int(CONFIG["max_batch"]),
        route=f"/{name}",
    )


def _init(self) -> None:
    self.models = load_all()


# Built with type() so each API method is bound when the class is created.
Bench = bentoml.service(
    name="bench", workers=int(CONFIG["workers"]), traffic={"timeout": 60},
)(type("Bench", (), {
    "__init__": _init,
    **{m["name"]: _endpoint(m["name"], m["primary"]) for m in CONFIG["models"]},
}))

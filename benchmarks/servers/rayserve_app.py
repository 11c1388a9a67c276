"""Ray Serve: one deployment per model with ``@serve.batch``, HTTP on loopback."""

import signal
import threading
from pathlib import Path

import numpy as np
import ray
from onnx_session import OnnxModel, config
from ray import serve
from starlette.requests import Request

CONFIG = config()
MAX_BATCH = int(CONFIG["max_batch"])
WAIT_S = float(CONFIG["wait_ms"]) / 1000


SERVE_BATCH = bool(CONFIG.get("serve_batch", True))


def _maybe_batched(fn):  # type: ignore[no-untyped-def]
    if SERVE_BATCH:
        return serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S)(fn)

    async def one(self, doc: dict) -> dict:  # type: ignore[no-untyped-def]
        return (await fn(self, [doc]))[0]

    return one


@serve.deployment
class OnnxDeployment:
    def __init__(self, spec: dict) -> None:
        self.model = OnnxModel(spec)

    @_maybe_batched
    async def predict_batch(self, docs: list[dict]) -> list[dict]:
        feed = {
            n: np.concatenate([np.asarray(d[n], dtype=np.float32) for d in docs])
            for n in self.model.input_names
        }
        outputs = self.model.run(feed)
        return [
            {k: v[i : i + 1].tolist() for k, v in outputs.items()} for i in range(len(docs))
        ]

    async def __call__(self, request: Request) -> dict:
        return await self.predict_batch(await request.json())


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ray.init(
        include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": int(CONFIG["port"])})
    for spec in CONFIG["models"]:
        # num_cpus 0: replicas of every model fit on a small machine at once.
        # max_ongoing_requests >= max_batch_size, as Serve asks, or batches never fill.
        app = OnnxDeployment.options(
            name=spec["name"], num_replicas=int(CONFIG["workers"]),
            max_ongoing_requests=MAX_BATCH if SERVE_BATCH else 5,
            ray_actor_options={"num_cpus": 0},
        ).bind(spec)
        serve.run(app, name=spec["name"], route_prefix=f"/{spec['name']}")
    Path(CONFIG["ready_file"]).write_text("ready")
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

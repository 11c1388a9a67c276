"""MLServer custom runtime (an MLModel subclass) running the benchmark's ONNX file.

MLServer ships no ONNX runtime of its own; its documented way to serve one is
a custom runtime next to model-settings.json, which this is.
"""

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from onnx_session import OnnxModel, config


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        spec = next(m for m in config()["models"] if m["name"] == self.name)
        self._model = OnnxModel(spec)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # With adaptive batching on, MLServer has already stacked the requests.
        feed = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        outputs = self._model.run(feed)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(n, v) for n, v in outputs.items()],
        )

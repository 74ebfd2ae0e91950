"""A small MLServer custom runtime serving an ONNX file with onnxruntime, for the benchmark.

It is what MLServer's documentation asks of a custom runtime: an ``MLModel`` subclass that
loads in ``load`` and, in ``predict``, decodes the V2 request with MLServer's codecs, runs
the model and encodes the outputs. Like MLServer's own runtimes (mlserver-sklearn) it calls
the model inside ``predict``; with parallel inference on, that is in a worker process.

Imported by MLServer from its own venv (``implementation: peers_mlserver.OnnxRuntimeModel``,
with this folder on ``PYTHONPATH``); the model file is ``parameters.uri``.
"""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri if self.settings.parameters else None
        self._session = ort.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self._outputs = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self._session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, array)
                for name, array in zip(self._outputs, results, strict=True)
            ],
        )

"""A custom MLServer runtime serving an ONNX model with onnxruntime (run by ``.venv-mlserver``).

MLServer has no ONNX runtime of its own; this is the small one a user writes.  The
model's ``model-settings.json`` names it (``"implementation": "mlserver_onnx.OnnxModel"``,
with this folder on ``PYTHONPATH``) and points ``parameters.uri`` at the ``.onnx`` file.
Its inputs and outputs, as the model metadata lists them, come from the ONNX graph.

Does not import streaminfer: this venv has MLServer's pins, not ours.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}


def _described(args: list) -> list[MetadataTensor]:
    return [
        MetadataTensor(
            name=a.name,
            datatype=_DATATYPES[a.type],
            shape=[d if isinstance(d, int) else -1 for d in a.shape],
        )
        for a in args
    ]


class OnnxModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.inputs = _described(self._session.get_inputs())
        self.outputs = _described(self._session.get_outputs())
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, np.asarray(value))
                for name, value in zip(self._outputs, results, strict=True)
            ],
        )

"""An MLServer runtime for ONNX models, so the server benchmark can compare MLServer with ours.

MLServer 1.7 has no ONNX runtime of its own.  This module runs inside MLServer's venv
(``make mlserver``), which does not have streaminfer: it imports only MLServer, ONNX
Runtime and numpy, and ``streaminfer.bench.mlserver`` copies it beside the model's
``model-settings.json``, where MLServer finds it by name.  The session is set up as
streaminfer's own (every core, no spinning threads), so only the servers differ.
"""

from __future__ import annotations

import asyncio

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):  # type: ignore[misc]  # MLServer is not installed beside mypy
    """Runs ``parameters.uri`` (an ``.onnx`` file): V2 inputs by name, every output back."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        # ORT releases the GIL: other requests are parsed while this one runs.
        arrays = await asyncio.to_thread(self._session.run, None, feeds)
        names = [output.name for output in self._session.get_outputs()]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(names, arrays, strict=True)],
        )

"""MLServer 1.7 (from ``.venv-mlserver``) serves an ONNX model through our runtime.

`make test` builds ``.venv-mlserver`` first (``make mlserver``); the server benchmark
compares our server with this one, so the runtime must answer correctly on both ports.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np

from streaminfer.bench.mlserver import MLServerProcess
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc

MLSERVER = Path(__file__).resolve().parents[2] / ".venv-mlserver" / "bin" / "mlserver"


def test_mlserver_runs_the_onnx_model_over_http_and_grpc(tmp_path: Path) -> None:
    model_file = export_tiny_model(tmp_path / "repo", version=1) / "model.onnx"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with MLServerProcess(MLSERVER, model_file, "tiny", tmp_path / "mlserver") as server:
        tensor = {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}
        reply = httpx.post(
            f"http://{server.address(rest=True)}/v2/models/tiny/infer",
            json={"inputs": [tensor]},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        (output,) = reply.json()["outputs"]
        assert output["name"] == "y" and output["shape"] == [2, 4]
        np.testing.assert_array_equal(np.float32(output["data"]), tiny_reference(x).ravel())

        request = v2.ModelInferRequest(model_name="tiny", raw_input_contents=[x.tobytes()])
        request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
        with grpc.insecure_channel(server.address(rest=False)) as channel:
            answer = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        (raw,) = answer.raw_output_contents
        np.testing.assert_array_equal(
            np.frombuffer(raw, np.float32).reshape(2, 4), tiny_reference(x)
        )

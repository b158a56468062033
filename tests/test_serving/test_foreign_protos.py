"""streaminfer in one process with the packages that define protobuf messages of the same
names: tritonclient (``inference.*``) and TensorFlow (``tensorflow.*``), imported before
streaminfer and after it.  Each case runs in a fresh interpreter, where the import order
is the one it names; protobuf refused the second package's files before streaminfer's
messages had a pool of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.models.metadata import TENSOR_MAX_BATCH
from tests.servers import ServerProcess
from tests.support import TF_PYTHON

STREAMINFER_CLIENTS = """
from streaminfer.predictors import RemoteOptions
from streaminfer.predictors.base import PredictRequest
from streaminfer.predictors.factory import REMOTE
"""

# argv: the KServe gRPC target, the TF Serving gRPC target; prints each client's answer.
BOTH_CLIENTS = """
import json, sys
import numpy as np

x = np.arange(8, dtype=np.float32).reshape(2, 4)
answers = {}
for mode, target in zip(("kserve-grpc", "tfserving-grpc"), sys.argv[1:3]):
    predictor = REMOTE[mode](target, RemoteOptions(timeout_s=20.0))
    (result,) = predictor.predict([PredictRequest("tiny", None, None, tensors={"x": x})])
    answers[mode] = result.outputs["y"].tolist()
    predictor.close()
client = tritonclient.grpc.InferenceServerClient(sys.argv[1])
tensor = tritonclient.grpc.InferInput("x", [2, 4], "FP32")
tensor.set_data_from_numpy(x)
answers["tritonclient"] = client.infer("tiny", [tensor]).as_numpy("y").tolist()
answers["max_batch_size"] = client.get_model_config("tiny").config.max_batch_size
print(json.dumps(answers))
"""

# Each side reads the other's TensorProto bytes.
TENSORS_BOTH_WAYS = """
import numpy as np

x = np.arange(12, dtype=np.float32).reshape(3, 4)
theirs = tf.make_tensor_proto(x)
ours = tensor_pb2.TensorProto.FromString(theirs.SerializeToString())
assert (from_tensor_proto("x", ours) == x).all()
back = tf.make_ndarray(type(theirs).FromString(to_tensor_proto(x).SerializeToString()))
assert (back == x).all()
print("both ways")
"""
TENSORFLOW = "import tensorflow as tf\n"
TENSOR_CODEC = """
from streaminfer.codecs.tfserving import from_tensor_proto, to_tensor_proto
from streaminfer.protos.tfserving import prediction_service_pb2_grpc, tensor_pb2
"""


@pytest.mark.parametrize("tritonclient_first", [True, False], ids=["tritonclient", "streaminfer"])
def test_tritonclient_and_streaminfer_clients_in_one_process(
    tritonclient_first: bool, tmp_path: Path
) -> None:
    export_tiny_model(tmp_path, version=1)
    imports = ["import tritonclient.grpc\n", STREAMINFER_CLIENTS]
    code = "".join(imports if tritonclient_first else imports[::-1]) + BOTH_CLIENTS
    with ServerProcess(tmp_path, log=tmp_path / "serve.log") as server:
        targets = [server.target("kserve-grpc"), server.target("tfserving-grpc")]
        run = subprocess.run(
            [sys.executable, "-c", code, *targets], capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 0, run.stderr
    answers = json.loads(run.stdout)
    expected = tiny_reference(np.arange(8, dtype=np.float32).reshape(2, 4))
    for client in ("kserve-grpc", "tfserving-grpc", "tritonclient"):
        np.testing.assert_allclose(answers[client], expected, rtol=1e-6)
    assert answers["max_batch_size"] == TENSOR_MAX_BATCH  # the tiny model's, by default


@pytest.mark.parametrize("tensorflow_first", [True, False], ids=["tensorflow", "streaminfer"])
def test_tensorflow_and_streaminfer_tensors_in_one_process(tensorflow_first: bool) -> None:
    imports = [TENSORFLOW, TENSOR_CODEC]
    code = "".join(imports if tensorflow_first else imports[::-1]) + TENSORS_BOTH_WAYS
    run = subprocess.run([str(TF_PYTHON), "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "both ways"

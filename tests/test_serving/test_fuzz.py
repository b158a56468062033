"""Whatever a client sends, the server answers with a 4xx at worst: never a 5xx or a crash."""

from __future__ import annotations

import json
import string
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import (
    predict_pb2,
    prediction_service_pb2_grpc,
    tensor_pb2,
    tensor_shape_pb2,
)
from tests.repository import MODEL
from tests.servers import ServerProcess

FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
names = st.sampled_from(["input", "images", "image_bytes", "top_k", "x", ""])
shapes = st.lists(st.integers(-2, 300) | st.sampled_from([1 << 40, 0]), max_size=5)
v2_tensors = st.fixed_dictionaries(
    {
        "name": names,
        "shape": shapes,
        "datatype": st.sampled_from(["FP32", "BYTES", "INT8", "FP16", "BF16", ""]),
    },
    optional={
        "data": json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size"]), json_values),
    },
)
bodies = (
    json_values
    | st.fixed_dictionaries({"instances": json_values}, optional={"signature_name": json_values})
    | st.fixed_dictionaries({"inputs": json_values | st.dictionaries(names, json_values)})
    | st.fixed_dictionaries(
        {"inputs": st.lists(v2_tensors, max_size=3)},
        optional={"outputs": json_values, "parameters": json_values, "id": json_values},
    )
)
path_text = st.text(alphabet=string.ascii_letters + string.digits + "/:._-", max_size=30)
paths = (
    st.sampled_from(
        [
            f"/v1/models/{MODEL}:predict",
            f"/v1/models/{MODEL}/versions/1:predict",
            f"/v1/models/{MODEL}/labels/x:predict",
            f"/v2/models/{MODEL}/infer",
            f"/v2/models/{MODEL}/versions/1/infer",
        ]
    )
    | path_text.map(lambda tail: "/v1/models/" + tail)
    | path_text.map(lambda tail: "/v2/" + tail)
)


@FUZZ
@given(path=paths, body=bodies)
def test_rest_bodies_and_paths(server: ServerProcess, path: str, body: Any) -> None:
    with server.client() as client:
        posted = client.post(path, content=json.dumps(body))
        fetched = client.get(path)
    for reply in (posted, fetched):
        assert reply.status_code < 500, (reply.status_code, reply.text)
        assert "error" in reply.json() or reply.status_code < 400


tensors = st.builds(
    tensor_pb2.TensorProto,
    dtype=st.integers(0, 25),
    tensor_shape=st.builds(
        tensor_shape_pb2.TensorShapeProto,
        dim=st.lists(
            st.builds(tensor_shape_pb2.TensorShapeProto.Dim, size=st.integers(-2, 400)), max_size=4
        ),
        unknown_rank=st.booleans(),
    ),
    tensor_content=st.binary(max_size=64),
    float_val=st.lists(st.floats(width=32, allow_nan=False), max_size=8),
    int_val=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
    string_val=st.lists(st.binary(max_size=16), max_size=3),
    half_val=st.lists(st.integers(0, 2**31 - 1), max_size=4),
)


@FUZZ
@given(
    inputs=st.dictionaries(names, tensors, max_size=3),
    signature=st.sampled_from(["", "serving_images", "x"]),
)
def test_grpc_predict_requests(
    server: ServerProcess, inputs: dict[str, Any], signature: str
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        except grpc.RpcError as exc:
            assert exc.code() not in SERVER_FAULTS, exc.details()


v2_inputs = st.builds(
    v2.ModelInferRequest.InferInputTensor,
    name=names,
    datatype=st.sampled_from(["FP32", "FP16", "BYTES", "INT64", "UINT8", "BOOL", "X"]),
    shape=st.lists(st.integers(-2, 400), max_size=4),
    contents=st.builds(
        v2.InferTensorContents,
        fp32_contents=st.lists(st.floats(width=32, allow_nan=False), max_size=6),
        bytes_contents=st.lists(st.binary(max_size=12), max_size=3),
        uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=4),
    ),
)


@FUZZ
@given(inputs=st.lists(v2_inputs, max_size=3), raw=st.lists(st.binary(max_size=64), max_size=3))
def test_grpc_model_infer_requests(
    server: ServerProcess, inputs: list[Any], raw: list[bytes]
) -> None:
    request = v2.ModelInferRequest(model_name=MODEL, inputs=inputs, raw_input_contents=raw)
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        except grpc.RpcError as exc:
            assert exc.code() not in SERVER_FAULTS, exc.details()

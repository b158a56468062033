"""Call a streaminfer server with TF Serving's official Python client (tensorflow-serving-api).

Runs in its own virtualenv (``make interop`` makes it): the official client needs
tensorflow, which streaminfer's own venv does not install.
Usage: ``python tfserving_client.py HOST:GRPC_PORT MODEL``; exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def main() -> None:
    address, model = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(address)

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = model
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request)
    states = {
        s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
        for s in status.model_version_status
    }
    print(f"GetModelStatus: {states}")
    assert "AVAILABLE" in states.values(), states

    batch = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs["input"].CopyFrom(tf.make_tensor_proto(batch))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 60)
    logits = tf.make_ndarray(response.outputs["logits"])
    print(
        f"Predict: logits {logits.shape}, top-1 {logits.argmax(axis=1).tolist()}, "
        f"version {response.model_spec.version.value}"
    )
    assert logits.shape == (2, 1000), logits.shape

    images = predict_pb2.PredictRequest()
    images.model_spec.name = model
    images.model_spec.signature_name = "serving_images"
    images.inputs["images"].CopyFrom(tf.make_tensor_proto([b"not an image"]))
    try:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(images, 60)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        print(f"Predict with a bad image: {exc.code().name}: {exc.details()}")
    else:
        raise AssertionError("a bad image was accepted")
    print("interop OK")


if __name__ == "__main__":
    main()

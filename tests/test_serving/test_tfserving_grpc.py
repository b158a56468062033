"""TF Serving gRPC: Predict (tensors and images), metadata, status, the legacy Classify."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from streaminfer.codecs.arrays import bytes_array
from streaminfer.codecs.tfserving import from_tensor_proto, to_tensor_proto
from streaminfer.models.registry import LoadedVersion
from streaminfer.protos.tfserving import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    inception_pb2,
    inception_pb2_grpc,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tests.repository import MODEL


def _predict(channel: grpc.Channel, **inputs: np.ndarray) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(to_tensor_proto(array))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)


def test_predict_float_tensor_matches_embedded(
    channel: grpc.Channel, embedded: LoadedVersion, float_input: np.ndarray
) -> None:
    response = _predict(channel, input=float_input)
    logits = from_tensor_proto("logits", response.outputs["logits"])
    expected = embedded.infer({"input": float_input})["logits"]
    assert logits.shape == (1, 1000)
    assert logits.argmax() == expected.argmax()
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 1


def test_predict_typed_float_val_is_accepted(
    channel: grpc.Channel, embedded: LoadedVersion, float_input: np.ndarray
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    tensor = request.inputs["input"]
    tensor.CopyFrom(to_tensor_proto(float_input))
    tensor.ClearField("tensor_content")
    tensor.float_val.extend(float_input.ravel().tolist())
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    logits = from_tensor_proto("logits", response.outputs["logits"])
    expected = embedded.infer({"input": float_input})["logits"]
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)


def test_predict_images_gives_the_embedded_top_1(
    channel: grpc.Channel, sample_jpegs: dict[str, bytes], expected_labels: dict[str, str]
) -> None:
    names = list(expected_labels)
    response = _predict(channel, images=bytes_array([sample_jpegs[n] for n in names]))
    classes = from_tensor_proto("classes", response.outputs["classes"])
    scores = from_tensor_proto("scores", response.outputs["scores"])
    assert classes.shape == scores.shape == (len(names), 5)
    assert [c.decode() for c in classes[:, 0]] == [expected_labels[n] for n in names]
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_top_k_input_changes_the_number_of_classes(
    channel: grpc.Channel, sample_jpegs: dict[str, bytes]
) -> None:
    response = _predict(
        channel, images=bytes_array([sample_jpegs["coffee"]]), top_k=np.array([2], np.int32)
    )
    assert from_tensor_proto("classes", response.outputs["classes"]).shape == (1, 2)


def test_output_filter_returns_only_the_asked_output(
    channel: grpc.Channel, sample_jpegs: dict[str, bytes]
) -> None:
    request = predict_pb2.PredictRequest(output_filter=["scores"])
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_images"
    request.inputs["images"].CopyFrom(to_tensor_proto(bytes_array([sample_jpegs["coffee"]])))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    assert list(response.outputs) == ["scores"]
    assert response.model_spec.signature_name == "serving_images"


def test_metadata_describes_both_signatures(channel: grpc.Channel) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    default = defs.signature_def["serving_default"]
    assert [d.size for d in default.inputs["input"].tensor_shape.dim] == [-1, 3, 224, 224]
    assert [d.size for d in default.outputs["logits"].tensor_shape.dim] == [-1, 1000]
    for name in ("serving_images", "predict_images"):
        images = defs.signature_def[name]
        assert set(images.inputs) == {"images"}
        assert set(images.outputs) == {"classes", "scores", "class_ids"}
    assert response.model_spec.version.value == 1


def test_model_status_reports_available(channel: grpc.Channel) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
    (status,) = response.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


def test_legacy_inception_classify(
    channel: grpc.Channel, sample_jpegs: dict[str, bytes], expected_labels: dict[str, str]
) -> None:
    stub = inception_pb2_grpc.InceptionServiceStub(channel)
    response = stub.Classify(inception_pb2.InceptionRequest(jpeg_encoded=sample_jpegs["chelsea"]))
    assert len(response.classes) == len(response.scores) == 5
    assert response.classes[0] == expected_labels["chelsea"]
    assert 0 < response.scores[0] <= 1


@pytest.mark.parametrize("method", ["Classify", "Regress"])
def test_classify_and_regress_are_unimplemented(channel: grpc.Channel, method: str) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request_type = {
        "Classify": inference_pb2.ClassificationRequest,
        "Regress": inference_pb2.RegressionRequest,
    }[method]
    request = request_type()
    request.model_spec.name = MODEL
    with pytest.raises(grpc.RpcError) as failure:
        getattr(stub, method)(request)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "use Predict" in failure.value.details()
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as failure:
        getattr(stub, method)(request)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND  # the model comes first

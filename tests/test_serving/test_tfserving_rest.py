"""TF Serving REST: status, metadata, row and columnar predict, b64 images, metrics."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from streaminfer.models.errors import InvalidInput
from streaminfer.models.registry import LoadedVersion
from streaminfer.serving.tfserving_rest import _read_predict_request
from tests.repository import MODEL
from tests.servers import ServerProcess

PREDICT = f"/v1/models/{MODEL}:predict"


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_status_by_model_version_and_unknown(server: ServerProcess) -> None:
    with server.client() as client:
        for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/1"):
            reply = client.get(path)
            assert reply.status_code == 200
            (status,) = reply.json()["model_version_status"]
            assert status["version"] == "1"
            assert status["state"] == "AVAILABLE"
            assert status["status"]["error_code"] == "OK"
        assert client.get(f"/v1/models/{MODEL}/versions/9").status_code == 404


def test_metadata_lists_signatures(server: ServerProcess) -> None:
    with server.client() as client:
        reply = client.get(f"/v1/models/{MODEL}/metadata")
    assert reply.status_code == 200
    document = reply.json()
    assert document["model_spec"]["version"] == "1"
    defs = document["metadata"]["signature_def"]["signature_def"]
    assert defs["serving_default"]["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert defs["serving_images"]["inputs"]["images"]["dtype"] == "DT_STRING"


def test_row_and_columnar_float_predict_match_embedded(
    server: ServerProcess, embedded: LoadedVersion, float_input: np.ndarray
) -> None:
    expected = embedded.infer({"input": float_input})["logits"]
    with server.client() as client:
        rows = client.post(PREDICT, json={"instances": float_input.tolist()})
        columns = client.post(PREDICT, json={"inputs": {"input": float_input.tolist()}})
    assert rows.status_code == columns.status_code == 200
    for logits in (np.array(rows.json()["predictions"]), np.array(columns.json()["outputs"])):
        assert logits.shape == (1, 1000)
        assert logits.argmax() == expected.argmax()
        np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)


def test_b64_images_give_the_embedded_top_1(
    server: ServerProcess, sample_jpegs: dict[str, bytes], expected_labels: dict[str, str]
) -> None:
    names = list(expected_labels)
    with server.client() as client:
        reply = client.post(
            PREDICT,
            json={
                "signature_name": "serving_images",
                "instances": [_b64(sample_jpegs[n]) for n in names],
            },
        )
        columnar = client.post(
            f"/v1/models/{MODEL}/versions/1:predict",
            json={"inputs": {"images": [_b64(sample_jpegs["coffee"])], "top_k": 3}},
        )
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    assert [p["classes"][0] for p in predictions] == [expected_labels[n] for n in names]
    assert all(len(p["scores"]) == 5 for p in predictions)
    assert columnar.status_code == 200, columnar.text
    assert columnar.json()["outputs"]["classes"][0][0] == expected_labels["coffee"]
    assert len(columnar.json()["outputs"]["scores"][0]) == 3


def test_classify_and_regress_answer_501(server: ServerProcess) -> None:
    with server.client() as client:
        for verb in ("classify", "regress"):
            reply = client.post(f"/v1/models/{MODEL}:{verb}", json={"examples": []})
            assert reply.status_code == 501
            assert ":predict" in reply.json()["error"]
            unknown = client.post(f"/v1/models/nope:{verb}", json={"examples": []})
            assert unknown.status_code == 404, unknown.text  # was 501: the model comes first


def test_prometheus_metrics_count_requests_and_batches(server: ServerProcess) -> None:
    with server.client() as client:
        client.post(PREDICT, json={"instances": np.zeros((1, 3, 224, 224)).tolist()})
        client.post(f"/v1/models/{MODEL}/versions/7:predict", json={"instances": [[0]]})
        tf_path = client.get("/monitoring/prometheus/metrics")
        short = client.get("/metrics")
    assert tf_path.status_code == short.status_code == 200
    text = tf_path.text
    ok = (
        'streaminfer_server_requests_total{model="efficientnet-lite0",protocol="tfserving_rest",'
        'status="ok",version="1"}'
    )
    assert ok in text
    assert 'status="not_found"' in text
    assert "streaminfer_server_request_duration_seconds_bucket" in text
    assert 'streaminfer_server_batch_size_count{model="efficientnet-lite0"}' in text
    assert 'streaminfer_server_queue_depth{model="efficientnet-lite0",version="1"}' in text


def test_floats_come_back_from_the_decoder_as_the_model_takes_them() -> None:
    """For a model whose inputs are all float32, the decoder casts the float64 it read, as
    the input check would; other arrays, and other models' floats, are left as read."""
    body = b'{"inputs": {"x": [[0.1, 3e38]], "n": [[1, 2]], "s": ["a"]}}'
    as_read, _, _ = _read_predict_request(body, False)
    narrowed, row_format, _ = _read_predict_request(body, True)
    np.testing.assert_array_equal(narrowed["x"], as_read["x"].astype(np.float32))
    assert not row_format
    assert as_read["x"].dtype == np.float64
    assert narrowed["x"].dtype == np.float32
    for name in ("n", "s"):
        np.testing.assert_array_equal(narrowed[name], as_read[name])
        assert narrowed[name].dtype == as_read[name].dtype
    with pytest.raises(InvalidInput, match="beyond float32's range"):  # not inf, as numpy's cast
        _read_predict_request(body.replace(b"3e38", b"1e300"), True)

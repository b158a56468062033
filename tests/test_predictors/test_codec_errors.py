"""Whose fault a codec error is, on the client side: the record's or the server's.

A loopback protocol client stands in for the wire: it encodes the request with the
real codec and decodes those same bytes as the answer, cut short when asked to.  Its
models take one input ``x`` of the dtype the model's name says.
"""

from __future__ import annotations

import numpy as np
import pytest

from streaminfer.codecs.v2 import infer_request_bytes, parse_infer_request, read_grpc_tensors
from streaminfer.errors import InfrastructureError
from streaminfer.models.errors import InvalidInput
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.base import PredictRequest, PredictResult
from streaminfer.predictors.remote import ModelRef, RemotePredictor
from streaminfer.predictors.signature import ServedModel, ServedTensor
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.types import Tensors


class _Loopback(RemotePredictor):
    mode = "loopback"

    def __init__(self, cut_answer: int = 0) -> None:
        super().__init__("loopback")
        self._cut = cut_answer

    def ready(self) -> bool:
        return True

    def _read_metadata(self, ref: ModelRef) -> ServedModel:
        tensor = ServedTensor("x", np.dtype(ref.name), (-1, 2))
        return ServedModel(inputs=(tensor,), outputs=(tensor,))

    def _infer_images(
        self, ref: ModelRef, served: ServedModel, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        raise AssertionError("these tests send tensors only")

    def _infer_tensors(
        self, ref: ModelRef, inputs: Tensors, output_filter: tuple[str, ...] = ()
    ) -> tuple[int, Tensors]:
        request, raw, _ = parse_infer_request(infer_request_bytes(v2.ModelInferRequest(), inputs))
        answer = [entry[: len(entry) - self._cut] for entry in raw]
        return 1, read_grpc_tensors(request.inputs, answer, "output")


def _request(array: np.ndarray) -> PredictRequest:
    return PredictRequest(model=array.dtype.name, tensors={"x": array})


def test_a_tensor_the_protocol_cannot_carry_is_the_records_fault() -> None:
    good = np.ones((1, 2), np.float32)
    outcomes = _Loopback().predict([_request(np.ones((1, 2), np.complex64)), _request(good)])
    assert isinstance(outcomes[0], InvalidInput) and outcomes[0].reason == "invalid_input"
    assert "complex64" in str(outcomes[0])
    assert isinstance(outcomes[1], PredictResult) and outcomes[1].outputs is not None
    np.testing.assert_array_equal(outcomes[1].outputs["x"], good)


def test_an_answer_that_does_not_decode_is_the_servers_fault() -> None:
    with pytest.raises(InfrastructureError, match="loopback: the answer does not decode"):
        _Loopback(cut_answer=1).predict([_request(np.ones((1, 2), np.float32))])

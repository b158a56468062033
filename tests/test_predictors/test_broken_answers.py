"""A model server whose answer is not a valid message, or too large, costs the call, not
the worker.

The worker's gRPC modes read an answer's tensors past protobuf (``protowire``); bytes
that do not parse fail in gRPC's deserializer, which reports ``INTERNAL``: a
``RequestFailed``, which the worker narrows down to a record and dead-letters as
``server_error`` if it persists.  An answer past ``max_answer_bytes`` is refused by
gRPC as it arrives: ``AnswerTooLarge``, bisected down to a record that ends ``too_large``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
import numpy as np
import pytest

from streaminfer.codecs.tfserving import predict_response_bytes
from streaminfer.codecs.v2 import infer_response_bytes
from streaminfer.errors import RequestFailed
from streaminfer.predictors.kserve_grpc import MODEL_INFER, KServeGrpcPredictor
from streaminfer.predictors.remote import AnswerTooLarge, RemoteOptions, RemotePredictor
from streaminfer.predictors.tfserving_grpc import PREDICT, TFServingGrpcPredictor
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.tfserving import predict_pb2
from streaminfer.types import ModelRef

TRUNCATED = b"\x0a\xff\xff"  # field 1, its length running past the end


MIB = 1 << 20
LARGE = np.zeros((1, 2 * MIB // 4), np.float32)  # a valid answer of 2 MiB


class _Answers(grpc.GenericRpcHandler):
    """Answers ModelInfer and Predict with ``answers[method]``."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        answer = self.answers.get(details.method)  # type: ignore[attr-defined]
        if answer is None:
            return None
        return grpc.unary_unary_rpc_method_handler(lambda request, context: answer)


@contextmanager
def _serving(answers: dict[str, bytes]) -> Iterator[str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(2), options=[("grpc.max_send_message_length", -1)]
    )
    server.add_generic_rpc_handlers((_Answers(answers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture(scope="module")
def broken_server() -> Iterator[str]:
    with _serving({MODEL_INFER: TRUNCATED, PREDICT: TRUNCATED}) as target:
        yield target


@pytest.fixture(scope="module")
def large_answers() -> Iterator[str]:
    kserve = infer_response_bytes(v2.ModelInferResponse(), {"y": LARGE})
    tfserving = predict_response_bytes(predict_pb2.PredictResponse(), {"y": LARGE})
    with _serving({MODEL_INFER: kserve, PREDICT: tfserving}) as target:
        yield target


@pytest.mark.parametrize("predictor", [KServeGrpcPredictor, TFServingGrpcPredictor])
def test_an_answer_that_is_no_message_is_a_failed_request(
    predictor: type[RemotePredictor], broken_server: str
) -> None:
    client = predictor(broken_server)
    try:
        with pytest.raises(RequestFailed, match="INTERNAL"):
            client._infer_tensors(ModelRef("m"), {"x": np.ones((1, 2), np.float32)})
    finally:
        client.close()


@pytest.mark.parametrize("predictor", [KServeGrpcPredictor, TFServingGrpcPredictor])
def test_an_answer_past_the_limit_is_refused_as_it_arrives(
    predictor: type[RemotePredictor], large_answers: str
) -> None:
    # Without a limit, a 512 MB answer took a worker to 1.65 GB (its tensors then refused).
    client = predictor(large_answers, RemoteOptions(max_answer_bytes=MIB))
    try:
        with pytest.raises(AnswerTooLarge, match=f"larger than max .* vs. {MIB}"):
            client._infer_tensors(ModelRef("m"), {"x": np.ones((1, 2), np.float32)})
    finally:
        client.close()
    wide_enough = predictor(large_answers, RemoteOptions(max_answer_bytes=4 * MIB))
    try:
        _, outputs = wide_enough._infer_tensors(ModelRef("m"), {"x": np.ones((1, 2), np.float32)})
    finally:
        wide_enough.close()
    assert outputs["y"].shape == LARGE.shape

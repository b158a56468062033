"""A model server whose answer is not a valid message costs the call, not the worker.

The worker's gRPC modes read an answer's tensors past protobuf (``protowire``); bytes
that do not parse fail in gRPC's deserializer, which reports ``INTERNAL``: a
``RequestFailed``, which the worker narrows down to a record and dead-letters as
``server_error`` if it persists.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from streaminfer.errors import RequestFailed
from streaminfer.predictors.kserve_grpc import MODEL_INFER, KServeGrpcPredictor
from streaminfer.predictors.remote import RemotePredictor
from streaminfer.predictors.tfserving_grpc import PREDICT, TFServingGrpcPredictor
from streaminfer.types import ModelRef

TRUNCATED = b"\x0a\xff\xff"  # field 1, its length running past the end


class _Broken(grpc.GenericRpcHandler):
    """Answers ModelInfer and Predict with bytes that are no message."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method in (MODEL_INFER, PREDICT):  # type: ignore[attr-defined]
            return grpc.unary_unary_rpc_method_handler(lambda request, context: TRUNCATED)
        return None


@pytest.fixture(scope="module")
def broken_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((_Broken(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


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

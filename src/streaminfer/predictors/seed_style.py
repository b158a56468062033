"""The original demo's way of calling the model server, kept as the benchmark's baseline.

Faithful on purpose, including what makes it slow: for every record a new gRPC
channel, one blocking ``tensorflow.serving.InceptionService/Classify`` call with the
JPEG in ``jpeg_encoded``, and the channel closed again.  No batching, no reuse.
"""

from __future__ import annotations

import time

import grpc

from streaminfer.errors import RecordError
from streaminfer.models.errors import InvalidInput
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.base import (
    Outcome,
    Predictor,
    PredictRequest,
    PredictResult,
    elapsed_ms,
)
from streaminfer.predictors.grpc_transport import status_error
from streaminfer.predictors.remote import class_id
from streaminfer.protos.tfserving import inception_pb2, inception_pb2_grpc


class SeedStylePredictor(Predictor):
    mode = "seed-style"

    def __init__(self, target: str, timeout_s: float = 10.0) -> None:
        self.target = target
        self.timeout_s = timeout_s

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for request in batch:
            try:
                outcomes.append(self._classify(request))
            except RecordError as exc:
                outcomes.append(exc)
        return outcomes

    def _classify(self, request: PredictRequest) -> PredictResult:
        if request.image is None:
            raise InvalidInput("the original demo's API classifies JPEG images only")
        started = time.perf_counter()
        with grpc.insecure_channel(self.target) as channel:
            stub = inception_pb2_grpc.InceptionServiceStub(channel)
            try:
                response = stub.Classify(
                    inception_pb2.InceptionRequest(jpeg_encoded=request.image),
                    timeout=self.timeout_s,
                )
            except grpc.RpcError as exc:
                raise status_error(self.target, exc) from exc
        predictions = [
            Prediction(class_id(name), name, score)
            for name, score in zip(response.classes, response.scores, strict=True)
        ]
        return PredictResult(
            request.model,
            0,  # the demo's API does not say which version answered
            self.mode,
            predictions=predictions[: request.top_k] if request.top_k else predictions,
            timings_ms={"inference": elapsed_ms(started, time.perf_counter())},
        )

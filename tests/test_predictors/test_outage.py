"""A real server stopped and started again: errors, breaker, recovery and fallback."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.models.export.efficientnet import INPUT_NAME
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    EmbeddedPredictor,
    FallbackPredictor,
    RemoteOptions,
    ResilientPredictor,
    RetryPolicy,
)
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest, PredictResult
from streaminfer.predictors.factory import REMOTE
from tests.servers import ServerProcess
from tests.test_predictors.cases import (
    MODEL,
    FakeClock,
    assert_classified,
    image_batch,
    stacked_requests,
)

RECOVERY_DEADLINE_S = 30.0
NO_RETRY = RetryPolicy(max_attempts=1)


def _until_served(predictor: Predictor, batch: list, clock: FakeClock) -> list[Outcome]:
    """Poll as the worker would: after each refusal the breaker's cool-down passes."""
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while True:
        try:
            return predictor.predict(batch)
        except InfrastructureError:
            if time.monotonic() > deadline:
                raise
            clock.now += 60  # the cool-down, without waiting for it
            time.sleep(0.05)  # polling interval while the channel reconnects


@pytest.mark.parametrize("mode", list(REMOTE))
def test_stopped_server_is_infrastructure_then_the_breaker_opens_and_recovers(
    mode: str, own_server: ServerProcess, sample_jpegs: dict
) -> None:
    clock = FakeClock()
    remote = REMOTE[mode](own_server.target(mode), RemoteOptions(timeout_s=5.0))
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=10.0, clock=clock)
    predictor = ResilientPredictor(remote, NO_RETRY, breaker, clock=clock)
    batch = image_batch(sample_jpegs)
    try:
        assert_classified(predictor.predict(batch), mode)  # connection established
        own_server.stop()
        for _ in range(3):
            with pytest.raises(InfrastructureError) as raised:
                predictor.predict(batch)
            assert not isinstance(raised.value, (RecordError, CircuitOpen))
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(CircuitOpen):
            predictor.predict(batch)
        clock.now += 10
        assert breaker.state is BreakerState.HALF_OPEN
        with pytest.raises(InfrastructureError):  # the probe fails: still down
            predictor.predict(batch)
        assert breaker.state is BreakerState.OPEN
        own_server.start()
        assert_classified(_until_served(predictor, batch, clock), mode)
        assert breaker.state is BreakerState.CLOSED
    finally:
        predictor.close()


def test_fallback_serves_in_process_while_the_server_is_down(
    own_server: ServerProcess, registry: ModelRegistry, sample_jpegs: dict
) -> None:
    clock = FakeClock()
    mode = "tfserving-grpc"
    remote = REMOTE[mode](own_server.target(mode), RemoteOptions(timeout_s=5.0))
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=10.0, clock=clock)
    predictor = FallbackPredictor(
        ResilientPredictor(remote, NO_RETRY, breaker, clock=clock),
        EmbeddedPredictor(registry, decode_workers=2),
    )
    batch = image_batch(sample_jpegs)
    stacked = {INPUT_NAME: np.zeros((2, 3, 224, 224), np.float32)}
    rows = stacked_requests(MODEL, stacked, [1, 1])
    try:
        assert_classified(predictor.predict(batch), mode)
        assert _modes(predictor.predict_stacked(rows, stacked, [1, 1])) == [mode] * 2
        own_server.stop()
        for _ in range(3):  # failing calls, then an open breaker: all served in process
            assert_classified(predictor.predict(batch), "embedded-fallback")
        assert breaker.state is BreakerState.OPEN
        assert predictor.fallback_batches == 3
        fallen_back = predictor.predict_stacked(rows, stacked, [1, 1])
        assert _modes(fallen_back) == ["embedded-fallback"] * 2
        assert predictor.fallback_batches == 4
        own_server.start()
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while predictor.predict(batch)[0].mode != mode:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "never went back to the server"
            clock.now += 60
            time.sleep(0.05)  # polling interval while the channel reconnects
        assert_classified(predictor.predict(batch), mode)
    finally:
        predictor.close()


def _modes(outcomes: list[Outcome]) -> list[str]:
    assert all(isinstance(o, PredictResult) and o.outputs for o in outcomes), outcomes
    return [o.mode for o in outcomes if isinstance(o, PredictResult)]


class MustNotBeAsked(Predictor):
    mode = "embedded"

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        raise AssertionError("the fallback must not be asked")


def test_record_errors_from_the_server_are_not_retried_on_the_fallback(
    server: ServerProcess, sample_jpegs: dict
) -> None:
    mode = "kserve-grpc"
    predictor = FallbackPredictor(
        REMOTE[mode](server.target(mode), RemoteOptions(timeout_s=20.0)), MustNotBeAsked()
    )
    try:
        (outcome,) = predictor.predict([PredictRequest(model="nope", image=sample_jpegs["coffee"])])
    finally:
        predictor.close()
    assert isinstance(outcome, RecordError) and outcome.reason == "unknown_model"

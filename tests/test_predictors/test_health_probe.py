"""The health probe that ends an open breaker's cool-down once the server answers again.

The policy runs on an injected clock (nothing sleeps); the last test stops and restarts a
real server and gets answers back while the breaker's clock never moves.
"""

from __future__ import annotations

import pytest

from streaminfer.errors import InfrastructureError
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest, PredictResult
from streaminfer.predictors.factory import REMOTE
from streaminfer.predictors.remote import RemoteOptions
from streaminfer.predictors.resilience import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    HealthProbe,
    ResilientPredictor,
    RetryPolicy,
)
from tests.servers import ServerProcess
from tests.support import wait_for
from tests.test_predictors.cases import FakeClock, assert_classified, image_batch

BATCH = [PredictRequest(model="m", image=b"x")]


class Switchable(Predictor):
    """Fails while ``down``; its health answer is ``healthy``."""

    mode = "switchable"

    def __init__(self) -> None:
        self.down = True
        self.healthy = False
        self.checks = 0

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        if self.down:
            raise InfrastructureError("down")
        return [PredictResult(r.model, 1, self.mode) for r in batch]

    def ready(self) -> bool:
        self.checks += 1
        return self.healthy


def _opened(clock: FakeClock) -> tuple[Switchable, ResilientPredictor]:
    inner = Switchable()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=30.0, clock=clock)
    probe = HealthProbe(inner.ready, interval_s=0.25, clock=clock)
    predictor = ResilientPredictor(inner, RetryPolicy(max_attempts=1), breaker, probe=probe)
    with pytest.raises(InfrastructureError):
        predictor.predict(BATCH)
    assert breaker.state is BreakerState.OPEN
    return inner, predictor


def test_the_probe_asks_at_most_once_per_interval() -> None:
    clock = FakeClock()
    answers = []
    probe = HealthProbe(lambda: answers.append(clock.now) or True, interval_s=0.25, clock=clock)
    assert probe.server_back()
    assert not probe.server_back()  # too soon: not asked
    clock.now += 0.2
    assert not probe.server_back()
    clock.now += 0.05
    assert probe.server_back()
    assert answers == [100.0, 100.25]


def test_while_down_the_breaker_stays_open_and_says_come_back_after_the_interval() -> None:
    clock = FakeClock()
    inner, predictor = _opened(clock)
    with pytest.raises(CircuitOpen) as refused:
        predictor.predict(BATCH)
    assert refused.value.retry_after_s == 0.25  # not the breaker's 30 s cool-down
    assert inner.checks == 1
    with pytest.raises(CircuitOpen):
        predictor.predict(BATCH)
    assert inner.checks == 1  # asked again only after the interval
    assert predictor.breaker.state is BreakerState.OPEN


def test_a_healthy_answer_lets_the_next_call_through_before_the_cool_down_ends() -> None:
    clock = FakeClock()
    inner, predictor = _opened(clock)
    inner.down, inner.healthy = False, True
    clock.now += 0.25  # far less than the 30 s cool-down
    assert predictor.predict(BATCH)[0].model == "m"  # type: ignore[union-attr]
    assert predictor.breaker.state is BreakerState.CLOSED


def test_healthy_but_still_failing_opens_the_breaker_again() -> None:
    clock = FakeClock()
    inner, predictor = _opened(clock)
    inner.healthy = True  # the health endpoint is up, inference is not
    clock.now += 0.25
    with pytest.raises(InfrastructureError) as raised:
        predictor.predict(BATCH)
    assert not isinstance(raised.value, CircuitOpen)  # the call went out, as the probe
    assert predictor.breaker.state is BreakerState.OPEN


@pytest.mark.parametrize("mode", list(REMOTE))
def test_a_restarted_server_is_found_by_its_health_endpoint(
    mode: str, own_server: ServerProcess, sample_jpegs: dict
) -> None:
    clock = FakeClock()  # never moved: only the probe can end the 1-hour cool-down
    remote = REMOTE[mode](own_server.target(mode), RemoteOptions(timeout_s=5.0))
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=3600.0, clock=clock)
    probe = HealthProbe(remote.ready, interval_s=0.0)
    predictor = ResilientPredictor(remote, RetryPolicy(max_attempts=1), breaker, probe=probe)
    batch = image_batch(sample_jpegs)
    try:
        assert_classified(predictor.predict(batch), mode)
        own_server.stop()
        with pytest.raises(InfrastructureError):
            predictor.predict(batch)
        assert breaker.state is BreakerState.OPEN and not remote.ready()
        own_server.start()
        outcomes = wait_for(lambda: _served(predictor, batch), 30, "the probe to find the server")
        assert_classified(outcomes, mode)
        assert breaker.state is BreakerState.CLOSED
    finally:
        predictor.close()


def _served(predictor: Predictor, batch: list[PredictRequest]) -> list[Outcome] | None:
    """The outcomes, or None while the breaker refuses (as the worker polls after CircuitOpen)."""
    try:
        return predictor.predict(batch)
    except CircuitOpen:
        return None

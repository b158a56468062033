"""Retry timings and breaker transitions, on an injected clock: nothing here sleeps."""

from __future__ import annotations

import random
import threading

import pytest

from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest, PredictResult
from streaminfer.predictors.resilience import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    ResilientPredictor,
    RetryPolicy,
)
from tests.test_predictors.cases import FakeClock


class Scripted(Predictor):
    """Fails with the scripted errors, in order, then succeeds."""

    mode = "scripted"

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = list(failures)
        self.calls = 0

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return [PredictResult(r.model, 1, self.mode) for r in batch]


BATCH = [PredictRequest(model="m", image=b"x")]


def test_backoff_caps_grow_exponentially_up_to_the_maximum() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=3.0, max_backoff_s=2.0)
    caps = [policy.backoff_cap(n) for n in range(1, 6)]
    assert caps == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0])
    assert policy.backoff_cap(10_000) == 2.0  # no overflow on a long outage


def test_full_jitter_spreads_delays_over_the_whole_range() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=1.0, max_backoff_s=1.0)
    rng = random.Random(7)
    delays = [policy.delay(1, rng) for _ in range(2000)]
    assert min(delays) >= 0.0 and max(delays) <= 1.0
    assert min(delays) < 0.05 and max(delays) > 0.95  # full jitter, not ±x %


def test_attempt_and_total_time_limits() -> None:
    by_count = RetryPolicy(max_attempts=3)
    assert by_count.allows(1, 0.0, 0.0) and by_count.allows(2, 0.0, 0.0)
    assert not by_count.allows(3, 0.0, 0.0)
    by_time = RetryPolicy(max_attempts=None, max_total_s=5.0)
    assert by_time.allows(1000, 4.0, 1.0)
    assert not by_time.allows(2, 4.5, 1.0)  # the next attempt would start after 5 s


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=0.5)


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=10.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(10.0)


def test_breaker_half_opens_after_cool_down_and_lets_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=10.0, clock=clock)
    breaker.record_failure()
    clock.now += 9.9
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert str(breaker.state) == "half-open" and int(breaker.state) == 2
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for it
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_failed_probe_opens_the_breaker_again_for_a_full_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout_s=10.0, clock=clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 10
    assert breaker.allow()
    breaker.record_failure()  # one failure in half-open suffices
    assert breaker.state is BreakerState.OPEN
    clock.now += 9
    assert not breaker.allow()


def test_released_probe_frees_the_slot_without_judging() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.release()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()


def test_only_one_probe_among_many_threads() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1
    granted: list[bool] = []
    start = threading.Barrier(8)

    def contend() -> None:
        start.wait()
        granted.append(breaker.allow())

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 1


def _resilient(
    inner: Predictor, clock: FakeClock, failure_threshold: int, reset_timeout_s: float = 5.0
) -> ResilientPredictor:
    retry = RetryPolicy(max_attempts=4, initial_backoff_s=0.0, max_backoff_s=0.0)
    breaker = CircuitBreaker(failure_threshold, reset_timeout_s, clock=clock)
    return ResilientPredictor(inner, retry, breaker, clock=clock)


def test_resilient_retries_infrastructure_errors_until_success() -> None:
    inner = Scripted([InfrastructureError("down"), InfrastructureError("down")])
    predictor = _resilient(inner, FakeClock(), failure_threshold=10)
    outcomes = predictor.predict(BATCH)
    assert inner.calls == 3
    assert isinstance(outcomes[0], PredictResult)
    assert predictor.breaker.state is BreakerState.CLOSED


def test_resilient_gives_up_after_max_attempts_with_the_last_error() -> None:
    inner = Scripted([InfrastructureError(f"down {n}") for n in range(10)])
    predictor = _resilient(inner, FakeClock(), failure_threshold=10)
    with pytest.raises(InfrastructureError, match="down 3"):
        predictor.predict(BATCH)
    assert inner.calls == 4


def test_resilient_fails_fast_while_open_then_recovers_through_a_probe() -> None:
    clock = FakeClock()
    inner = Scripted([InfrastructureError("down")] * 2)
    predictor = _resilient(inner, clock, failure_threshold=2, reset_timeout_s=5.0)
    with pytest.raises(CircuitOpen) as opened:
        predictor.predict(BATCH)
    assert opened.value.retry_after_s == pytest.approx(5.0)
    assert isinstance(opened.value, InfrastructureError)  # the worker retries, never skips
    with pytest.raises(CircuitOpen):
        predictor.predict(BATCH)
    assert inner.calls == 2  # no call while open
    clock.now += 5
    assert isinstance(predictor.predict(BATCH)[0], PredictResult)
    assert predictor.breaker.state is BreakerState.CLOSED


def test_record_errors_and_bugs_are_not_retried() -> None:
    inner = Scripted([RecordError("bad"), ValueError("bug")])
    predictor = _resilient(inner, FakeClock(), failure_threshold=1)
    with pytest.raises(RecordError):
        predictor.predict(BATCH)
    with pytest.raises(ValueError):
        predictor.predict(BATCH)
    assert inner.calls == 2
    assert predictor.breaker.state is BreakerState.CLOSED

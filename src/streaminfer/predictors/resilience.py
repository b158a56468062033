"""Riding out a flaky model server: retries with backoff, and a circuit breaker.

Only ``InfrastructureError`` is retried: a ``RecordError`` outcome is an answer, not a
failure.  Retries use exponential backoff with full jitter, so that many workers that
lost the same server do not come back in lockstep.  The breaker stops calling a server
that keeps failing and lets one probe through after a cool-down; while it is open,
``predict`` raises ``CircuitOpen`` at once, the worker pauses consumption and tries the
same records again later.  Nothing is ever skipped.

A :class:`HealthProbe` ends the cool-down early: while the breaker is open, each refused
call may ask the server's health endpoint (at most once per ``interval_s``), and a
healthy answer lets the next call through at once.  ``CircuitOpen.retry_after_s`` is then
the probe interval, so outputs resume within about that long of the server coming back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from streaminfer.errors import InfrastructureError
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest
from streaminfer.types import Tensors

Clock = Callable[[], float]

_MAX_EXPONENT = 64  # beyond this every sane policy is at its max_backoff anyway


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a failed call.

    An attempt is retried while fewer than ``max_attempts`` were made (``None``: no
    limit) and the next attempt would start within ``max_total_s`` of the first
    (``None``: no limit).  The wait after attempt ``n`` is uniform in
    ``[0, min(max_backoff_s, initial_backoff_s * multiplier ** (n - 1))]`` ("full jitter").
    """

    max_attempts: int | None = 3
    max_total_s: float | None = None
    initial_backoff_s: float = 0.05
    multiplier: float = 2.0
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    def backoff_cap(self, attempt: int) -> float:
        """The longest wait after failed attempt ``attempt`` (counted from 1)."""
        exponent = min(attempt - 1, _MAX_EXPONENT)
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**exponent)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A jittered wait after failed attempt ``attempt``."""
        return rng.uniform(0.0, self.backoff_cap(attempt))

    def allows(self, attempt: int, elapsed_s: float, next_delay_s: float) -> bool:
        """Whether another attempt may follow failed attempt ``attempt``."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return False
        return self.max_total_s is None or elapsed_s + next_delay_s <= self.max_total_s


class BreakerState(IntEnum):
    """As a gauge: 0 closed (calls flow), 1 open (calls refused), 2 half-open (one probe)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    def __str__(self) -> str:
        return self.name.lower().replace("_", "-")


class CircuitOpen(InfrastructureError):
    """The breaker refuses calls for now; retry the same records after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures → half-open after
    ``reset_timeout_s`` → closed on the probe's success, open again on its failure.

    Thread-safe.  In half-open exactly one caller gets ``allow() == True`` (the probe);
    the others are refused until the probe reports back.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        with self._lock:
            if self._current() is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.reset_timeout_s - self._clock())

    def allow(self) -> bool:
        """May a call go out now?  A True in half-open makes the caller the probe."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            state = self._current()
            if state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
            self._probing = False

    def resume(self) -> None:
        """The server was seen healthy: end an open breaker's cool-down now (half-open)."""
        with self._lock:
            if self._current() is BreakerState.OPEN:
                self._state = BreakerState.HALF_OPEN

    def release(self) -> None:
        """The call ended in neither success nor infrastructure failure (a bug, say):
        free the probe slot without judging the server."""
        with self._lock:
            self._probing = False

    def _current(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_timeout_s
        ):
            self._state = BreakerState.HALF_OPEN
        return self._state


class HealthProbe:
    """Asks ``check`` (a server's health endpoint) at most once per ``interval_s``.

    Thread-safe: of callers arriving together, one asks and the others are told "not yet".
    """

    def __init__(
        self, check: Callable[[], bool], interval_s: float = 0.25, clock: Clock = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._check = check
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None

    def server_back(self) -> bool:
        """Whether the server answered healthy now; False without asking if asked too recently."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self.interval_s:
                return False
            self._last = now
        return self._check()


class ResilientPredictor(Predictor):
    """Retries a predictor's infrastructure failures, behind a circuit breaker."""

    def __init__(
        self,
        inner: Predictor,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        *,
        probe: HealthProbe | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.mode = inner.mode
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self.probe = probe
        self._clock = clock
        self._rng = rng or random.Random()
        self._closed = threading.Event()  # wakes retries that are waiting when closing

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        return self._retried(lambda: self.inner.predict(batch))

    def predict_stacked(
        self, batch: list[PredictRequest], stacked: Tensors, rows: list[int]
    ) -> list[Outcome]:
        return self._retried(lambda: self.inner.predict_stacked(batch, stacked, rows))

    def _retried(self, call: Callable[[], list[Outcome]]) -> list[Outcome]:
        started = self._clock()
        attempt = 0
        while True:
            if not self._may_call():
                wait = self.breaker.retry_after_s()
                if self.probe is not None:
                    wait = min(wait, self.probe.interval_s)
                raise CircuitOpen(
                    f"{self.mode}: circuit open after {self.breaker.consecutive_failures} "
                    f"consecutive failures; next probe in {wait:.1f} s",
                    wait,
                )
            attempt += 1
            try:
                outcomes = call()
            except InfrastructureError:
                self.breaker.record_failure()
                delay = self.retry.delay(attempt, self._rng)
                if not self.retry.allows(attempt, self._clock() - started, delay):
                    raise
                if self._closed.wait(delay):
                    raise
                continue
            except BaseException:
                self.breaker.release()
                raise
            self.breaker.record_success()
            return outcomes

    def _may_call(self) -> bool:
        """The breaker allows a call, or the probe found the server back (the call is then
        the breaker's half-open probe)."""
        if self.breaker.allow():
            return True
        if self.probe is None or self.breaker.state is not BreakerState.OPEN:
            return False
        if not self.probe.server_back():
            return False
        self.breaker.resume()
        return self.breaker.allow()

    def circuit_state(self) -> int:
        return int(self.breaker.state)

    def close(self) -> None:
        self._closed.set()
        self.inner.close()

"""Keep predicting when the model server is gone: serve the batch in process instead.

Only infrastructure failures (including an open circuit breaker) fall back.  A record
the server rejected is rejected for a reason the embedded model would share, so it is
not tried again there.  Results served by the fallback say so in ``mode``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from streaminfer.errors import InfrastructureError
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest, PredictResult
from streaminfer.types import Tensors

log = logging.getLogger(__name__)


class FallbackPredictor(Predictor):
    def __init__(self, primary: Predictor, fallback: Predictor) -> None:
        self.primary = primary
        self.fallback = fallback
        self.mode = primary.mode
        self.fallback_mode = f"{fallback.mode}-fallback"
        self._lock = threading.Lock()
        self.fallback_batches = 0  # for metrics: batches the fallback served
        self._falling_back = False  # log transitions, not every batch

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        return self._served(lambda predictor: predictor.predict(batch))

    def predict_stacked(
        self, batch: list[PredictRequest], stacked: Tensors, rows: list[int]
    ) -> list[Outcome]:
        return self._served(lambda predictor: predictor.predict_stacked(batch, stacked, rows))

    def _served(self, call: Callable[[Predictor], list[Outcome]]) -> list[Outcome]:
        """By the primary; by the fallback while the primary cannot serve."""
        try:
            outcomes = call(self.primary)
        except InfrastructureError as exc:
            self._note(True, exc)
            outcomes = call(self.fallback)
            for outcome in outcomes:
                if isinstance(outcome, PredictResult):
                    outcome.mode = self.fallback_mode
            return outcomes
        self._note(False, None)
        return outcomes

    def circuit_state(self) -> int:
        return self.primary.circuit_state()

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()

    def _note(self, failed: bool, error: InfrastructureError | None) -> None:
        with self._lock:
            changed = failed != self._falling_back
            self._falling_back = failed
            self.fallback_batches += failed
        if changed and failed:
            log.warning("%s failed (%s); serving with %s", self.mode, error, self.fallback_mode)
        elif changed:
            log.info("%s is back; no longer serving with %s", self.mode, self.fallback_mode)

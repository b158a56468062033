"""Getting predictions: embedded, or from a model server over TF Serving or KServe V2.

Every predictor answers ``predict(batch) -> outcomes``, one ``PredictResult`` or
``RecordError`` per request, and raises ``InfrastructureError`` when it cannot serve
the batch at all.  :func:`create_predictor` builds one from a mode name.
"""

from streaminfer.predictors.base import Outcome, Predictor, PredictRequest, PredictResult
from streaminfer.predictors.embedded import EmbeddedPredictor
from streaminfer.predictors.factory import MODES, create_predictor, default_server
from streaminfer.predictors.fallback import FallbackPredictor
from streaminfer.predictors.kserve_grpc import KServeGrpcPredictor
from streaminfer.predictors.kserve_http import KServeHttpPredictor
from streaminfer.predictors.remote import (
    UNKNOWN_CLASS_ID,
    RemoteOptions,
    RemotePredictor,
    ServerRejected,
)
from streaminfer.predictors.resilience import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    ResilientPredictor,
    RetryPolicy,
)
from streaminfer.predictors.seed_style import SeedStylePredictor
from streaminfer.predictors.tfserving_grpc import TFServingGrpcPredictor
from streaminfer.predictors.tfserving_rest import TFServingRestPredictor

__all__ = [
    "MODES",
    "UNKNOWN_CLASS_ID",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "EmbeddedPredictor",
    "FallbackPredictor",
    "KServeGrpcPredictor",
    "KServeHttpPredictor",
    "Outcome",
    "PredictRequest",
    "PredictResult",
    "Predictor",
    "RemoteOptions",
    "RemotePredictor",
    "ResilientPredictor",
    "RetryPolicy",
    "SeedStylePredictor",
    "ServerRejected",
    "TFServingGrpcPredictor",
    "TFServingRestPredictor",
    "create_predictor",
    "default_server",
]

"""Nobody listening: every remote predictor says infrastructure, never the record's fault."""

from __future__ import annotations

import numpy as np
import pytest

from streaminfer.errors import ConfigError, InfrastructureError, RecordError
from streaminfer.net import free_port
from streaminfer.predictors import MODES, RemoteOptions, SeedStylePredictor, create_predictor
from streaminfer.predictors.base import PredictRequest
from streaminfer.predictors.factory import REMOTE

REMOTE_MODES = [*REMOTE, "seed-style"]


@pytest.mark.parametrize("mode", REMOTE_MODES)
@pytest.mark.parametrize("kind", ["image", "tensors"])
def test_refused_connection_is_infrastructure(mode: str, kind: str) -> None:
    target = f"127.0.0.1:{free_port()}"
    predictor = (
        SeedStylePredictor(target, timeout_s=2.0)
        if mode == "seed-style"
        else REMOTE[mode](target, RemoteOptions(timeout_s=2.0))
    )
    request = (
        PredictRequest(model="m", image=b"\xff\xd8")
        if kind == "image"
        else PredictRequest(model="m", tensors={"x": np.zeros((1, 2), np.float32)})
    )
    try:
        if mode == "seed-style" and kind == "tensors":
            (outcome,) = predictor.predict([request])
            assert isinstance(outcome, RecordError)  # the demo's API has no tensors
            return
        with pytest.raises(InfrastructureError) as raised:
            predictor.predict([request, request])
        assert not isinstance(raised.value, RecordError)
    finally:
        predictor.close()


def test_every_mode_is_known_and_a_bad_one_is_a_config_error() -> None:
    assert set(MODES) == {"embedded", *REMOTE_MODES}
    with pytest.raises(ConfigError, match="unknown predictor mode"):
        create_predictor("carrier-pigeon")
    with pytest.raises(ConfigError, match="repository"):
        create_predictor("embedded")

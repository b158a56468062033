"""Tabular records over TF Serving REST: ``{"instances": [{feature: value}, ...]}`` to a model
that declares features is classified as the worker classifies them (the data plane reads
the rows with models/features.py), agreeing with scikit-learn."""

from __future__ import annotations

from collections.abc import Iterator

import joblib
import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streaminfer.flights import FEATURES, flights, split
from streaminfer.models.imports import import_model
from tests.servers import ServerProcess

TRAIN, HELD_OUT = split(flights(600, seed=3))
ROWS = HELD_OUT[FEATURES].head(12)
PREDICT = "/v1/models/delays:predict"


@pytest.fixture(scope="module")
def delays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list]]:
    """Our server over the imported pipeline, and scikit-learn's answers for ``ROWS``."""
    pipeline = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=20, random_state=0)
    ).fit(TRAIN[FEATURES], TRAIN["status"])
    folder = tmp_path_factory.mktemp("delays")
    joblib.dump(pipeline, folder / "pipeline.joblib")
    import_model(folder / "pipeline.joblib", folder / "repo", "delays", trust_pickle=True)
    want = list(zip(pipeline.predict(ROWS), pipeline.predict_proba(ROWS).max(axis=1), strict=True))
    with ServerProcess(folder / "repo", log=folder / "serve.log") as server:
        yield server, want


def test_records_of_named_features_are_classified(delays: tuple[ServerProcess, list]) -> None:
    server, want = delays
    records = ROWS.to_dict("records")
    instances = [row if i % 2 else {"features": row} for i, row in enumerate(records)]
    with server.client() as client:
        response = client.post(PREDICT, json={"instances": instances})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert [a["predictions"][0]["label"] for a in answers] == [str(label) for label, _ in want]
    scores = [a["predictions"][0]["score"] for a in answers]
    np.testing.assert_allclose(scores, [p for _, p in want], atol=1e-5)
    assert {p["label"] for p in answers[0]["predictions"]} == {"on_time", "late", "very_late"}


@pytest.mark.parametrize(
    ("change", "feature"),
    [({"carrier": None}, "carrier"), ({"seat": 3}, "seat"), ({"distance": "far"}, "distance")],
)
def test_a_bad_record_is_a_bad_request_naming_the_feature(
    delays: tuple[ServerProcess, list], change: dict, feature: str
) -> None:
    server, _ = delays
    good = ROWS.iloc[0].to_dict()
    bad = {k: v for k, v in {**good, **change}.items() if v is not None}
    with server.client() as client:
        response = client.post(PREDICT, json={"instances": [good, bad]})
    assert response.status_code == 400
    assert f"'{feature}'" in response.json()["error"]


def test_the_models_own_input_still_takes_tensors(delays: tuple[ServerProcess, list]) -> None:
    server, want = delays
    rows = ROWS.to_numpy(dtype=np.float32).tolist()
    with server.client() as client:
        response = client.post(PREDICT, json={"instances": [{"input": row} for row in rows]})
    assert response.status_code == 200, response.text
    labels = [row["label"] for row in response.json()["predictions"]]
    assert labels == [str(label) for label, _ in want]


def test_records_past_the_values_a_request_may_hold_are_refused_unread(
    delays: tuple[ServerProcess, list],
) -> None:
    """A tabular model's records are read in the server itself: 60 MB of tiny records took
    it to 2.1 GB (7.5 million dicts).  Their values are counted first, and the body refused."""
    server, _ = delays
    body = b'{"instances": [' + b",".join([b'{"a":1}'] * 7_500_000) + b"]}"
    before_kb = server.status_kb("VmRSS")
    with server.client() as client:
        reply = client.post(PREDICT, content=body, timeout=120)
    assert reply.status_code == 400, reply.text
    assert "JSON values, more than the 2,097,152 a request may hold" in reply.json()["error"]
    grown_mb = (server.status_kb("VmHWM") - before_kb) // 1024
    assert grown_mb < 300, f"the server grew by {grown_mb} MB"


def test_records_past_the_models_batch_limit_are_refused_before_any_row_is_built(
    delays: tuple[ServerProcess, list],
) -> None:
    """Tensors were held to ``max_batch_size`` and records were not: 150,000 of them were
    answered 200 and took the server from 314 to 616 MB."""
    server, _ = delays
    with server.client() as client:
        limit = client.get("/v2/models/delays/config").json()["max_batch_size"]
        records = ROWS.head(1).to_dict("records") * (limit + 1)
        reply = client.post(PREDICT, json={"instances": records})
        assert reply.status_code == 400, reply.text
        assert f"at most {limit} rows per request" in reply.json()["error"]
        fits = client.post(PREDICT, json={"instances": records[:limit]})
    assert fits.status_code == 200, fits.text
    assert len(fits.json()["predictions"]) == limit

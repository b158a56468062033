"""``models import``: scikit-learn, XGBoost and LightGBM models trained here on generated
flights, converted, verified and served from the registry with the framework's answers."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streaminfer.errors import ConfigError
from streaminfer.flights import FEATURES, flights, split
from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.features import (
    classify_rows,
    feature_batch,
    feature_row,
    output_rows,
    record_features,
)
from streaminfer.models.imports import import_model
from streaminfer.models.imports.tabular import convert
from streaminfer.models.imports.verify import PROBABILITY_TOLERANCE, verify_tabular
from streaminfer.models.metadata import Feature, ModelMetadata
from streaminfer.models.registry import ModelRegistry
from tests.support import run_cli

TRAIN, HELD_OUT = split(flights(1600))


def held_out_csv(folder: Path) -> Path:
    path = folder / "sample.csv"
    # Columns in another order than the model's: the header decides.
    HELD_OUT[list(reversed(FEATURES))].to_csv(path, index=False)
    return path


def serve_records(repo: Path, name: str, frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Each row as a JSON record through the registry: (top labels, probabilities)."""
    registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
    registry.reload()
    try:
        served = registry.resolve(name, None, None)
        documents = [json.loads(json.dumps({"features": r})) for r in frame.to_dict("records")]
        metadata = served.metadata
        rows = [feature_row(record_features(d), declared(metadata)) for d in documents]
        outcomes = classify_rows(
            served.infer(feature_batch(rows, metadata)), metadata, served.class_names, None
        )
    finally:
        registry.close()
    labels, probabilities = [], np.zeros((len(frame), len(served.class_names or [])))
    for row, ranked in enumerate(outcomes):  # every class, best first
        labels.append(ranked[0].label)
        for prediction in ranked:
            probabilities[row, prediction.class_id] = prediction.score
    return labels, probabilities


def declared(metadata: ModelMetadata) -> list[Feature]:
    assert metadata.features is not None
    return metadata.features


def assert_matches(
    labels: list[str], probabilities: np.ndarray, want_labels: list[str], want: np.ndarray
) -> None:
    assert labels == want_labels
    np.testing.assert_allclose(probabilities, want, rtol=0, atol=1e-5)


def test_sklearn_pipeline_from_a_trusted_pickle(tmp_path: Path) -> None:
    pipeline = make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=60, random_state=0)
    ).fit(TRAIN[FEATURES], TRAIN["status"])
    source = tmp_path / "pipeline.joblib"
    joblib.dump(pipeline, source)
    repo = tmp_path / "repo"

    folder = import_model(source, repo, "delays", trust_pickle=True, sample=held_out_csv(tmp_path))

    metadata = ModelMetadata.read(folder)
    assert [f.name for f in metadata.features or []] == FEATURES
    assert metadata.labels(folder) == ["late", "on_time", "very_late"]
    labels, probabilities = serve_records(repo, "delays", HELD_OUT[FEATURES])
    assert_matches(
        labels,
        probabilities,
        list(pipeline.predict(HELD_OUT[FEATURES])),
        pipeline.predict_proba(HELD_OUT[FEATURES]),
    )


def test_xgboost_model_file(tmp_path: Path) -> None:
    model = xgb.XGBClassifier(n_estimators=80, max_depth=4).fit(TRAIN[FEATURES], TRAIN["delayed"])
    source = tmp_path / "model.json"
    model.save_model(source)
    sample = tmp_path / "sample.npy"
    np.save(sample, HELD_OUT[FEATURES].to_numpy(np.float32))
    repo = tmp_path / "repo"

    folder = import_model(source, repo, "xgb", sample=sample)  # format from the suffix

    metadata = ModelMetadata.read(folder)
    assert [f.name for f in metadata.features or []] == FEATURES
    assert metadata.labels(folder) == ["0", "1"]
    labels, probabilities = serve_records(repo, "xgb", HELD_OUT[FEATURES])
    assert_matches(
        labels,
        probabilities,
        [str(v) for v in model.predict(HELD_OUT[FEATURES])],
        model.predict_proba(HELD_OUT[FEATURES]),
    )


def test_lightgbm_classifier_with_named_classes(tmp_path: Path) -> None:
    model = lgb.LGBMClassifier(n_estimators=80, verbose=-1).fit(TRAIN[FEATURES], TRAIN["status"])
    source = tmp_path / "model.pkl"
    joblib.dump(model, source)
    repo = tmp_path / "repo"

    folder = import_model(
        source, repo, "lgbm", format="lightgbm", trust_pickle=True, sample=held_out_csv(tmp_path)
    )

    assert ModelMetadata.read(folder).labels(folder) == ["late", "on_time", "very_late"]
    labels, probabilities = serve_records(repo, "lgbm", HELD_OUT[FEATURES])
    assert_matches(
        labels,
        probabilities,
        list(model.predict(HELD_OUT[FEATURES])),
        model.predict_proba(HELD_OUT[FEATURES]),
    )


def test_lightgbm_booster_file_verified_on_generated_rows(tmp_path: Path) -> None:
    """No sample and no names in the file: generated rows verify it, --features names it."""
    booster = lgb.train(
        {"objective": "binary", "verbose": -1},
        lgb.Dataset(TRAIN[FEATURES].to_numpy(), TRAIN["delayed"].to_numpy()),
        num_boost_round=40,
    )
    source = tmp_path / "booster.txt"
    booster.save_model(source)
    named = [Feature(name=n) for n in FEATURES]

    folder = import_model(source, tmp_path / "repo", "booster", features=named)

    metadata = ModelMetadata.read(folder)
    assert metadata.features == named
    labels, probabilities = serve_records(tmp_path / "repo", "booster", HELD_OUT[FEATURES])
    p = booster.predict(HELD_OUT[FEATURES].to_numpy(np.float32))
    np.testing.assert_allclose(probabilities, np.stack([1 - p, p], axis=1), atol=1e-5)
    assert labels == [str(int(v > 0.5)) for v in p]


def test_regressor_reports_its_outputs(tmp_path: Path) -> None:
    model = GradientBoostingRegressor(n_estimators=40, random_state=0)
    model.fit(TRAIN[FEATURES], TRAIN["arr_delay"])
    source = tmp_path / "regressor.pkl"
    joblib.dump(model, source)
    repo = tmp_path / "repo"

    folder = import_model(source, repo, "minutes", trust_pickle=True)

    metadata = ModelMetadata.read(folder)
    assert metadata.probabilities_output is None and metadata.labels_file is None
    registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
    registry.reload()
    try:
        served = registry.resolve("minutes", None, None)
        rows = [feature_row(r, declared(metadata)) for r in HELD_OUT[FEATURES].to_dict("records")]
        per_row = output_rows(served.infer(feature_batch(rows, metadata)))
    finally:
        registry.close()
    got = np.array([row["variable"] for row in per_row]).reshape(-1)
    want = model.predict(HELD_OUT[FEATURES])
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_a_pickle_is_refused_without_trust(tmp_path: Path) -> None:
    source = tmp_path / "model.pkl"
    joblib.dump(GradientBoostingRegressor(n_estimators=2).fit([[0.0], [1.0]], [0, 1]), source)
    with pytest.raises(ConfigError, match="loading a pickle runs code"):
        import_model(source, tmp_path / "repo", "m")
    assert not (tmp_path / "repo" / "m").exists()


def test_verification_rejects_a_framework_that_disagrees() -> None:
    model = GradientBoostingClassifier(n_estimators=10, random_state=0)
    model.fit(TRAIN[FEATURES], TRAIN["delayed"])
    converted = convert(model)
    rows = HELD_OUT[FEATURES].to_numpy(np.float32)
    verify_tabular(converted, converted.model, rows)  # agrees as converted

    shifted = 3 * PROBABILITY_TOLERANCE
    skewed = dataclasses.replace(
        converted, predict=lambda r: converted.predict(r) + np.array([-shifted, shifted])
    )
    with pytest.raises(ConfigError, match=r"disagrees with scikit-learn on \d+ of 400 sample rows"):
        verify_tabular(skewed, converted.model, rows)


def test_sample_must_name_every_feature(tmp_path: Path) -> None:
    model = xgb.XGBClassifier(n_estimators=5).fit(TRAIN[FEATURES], TRAIN["delayed"])
    source = tmp_path / "model.ubj"
    model.save_model(source)
    sample = tmp_path / "sample.csv"
    HELD_OUT[FEATURES[:-1]].to_csv(sample, index=False)
    with pytest.raises(ConfigError, match="has no column 'carrier'"):
        import_model(source, tmp_path / "repo", "xgb", sample=sample)
    assert not (tmp_path / "repo" / "xgb").exists()


def test_cli_warns_about_pickles_and_imports(tmp_path: Path) -> None:
    model = GradientBoostingClassifier(n_estimators=10, random_state=0)
    model.fit(TRAIN[FEATURES], TRAIN["delayed"])
    source = tmp_path / "model.joblib"
    joblib.dump(model, source)
    repo = tmp_path / "repo"

    refused = run_cli("models", "import", str(source), "--repo", str(repo), "--name", "m")
    assert refused.returncode == 2
    assert "--trust-pickle" in refused.stderr

    imported = run_cli(
        "models", "import", str(source), "--repo", str(repo), "--name", "m", "--trust-pickle"
    )
    assert imported.returncode == 0, imported.stderr
    assert "runs any code it contains" in imported.stderr
    assert (repo / "m" / "1" / "model.onnx").is_file()


def test_cli_names_the_extra_when_a_converter_is_missing(tmp_path: Path) -> None:
    """A module that fails to import stands in for an uninstalled skl2onnx."""
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "skl2onnx.py").write_text("raise ImportError('not installed')\n")
    source = tmp_path / "model.joblib"
    joblib.dump(GradientBoostingRegressor(n_estimators=2).fit([[0.0], [1.0]], [0, 1]), source)
    path = os.pathsep.join([str(blocker), *sys.path])
    result = run_cli(
        "models", "import", str(source), "--repo", str(tmp_path / "repo"), "--name", "m",
        "--trust-pickle", env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'streaminfer[sklearn]'" in result.stderr
    assert not (tmp_path / "repo" / "m").exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("model.txt", b"hello\n", "is not a LightGBM model: Unknown model format"),
        ("model.json", b'{"a": 1}', "is not an XGBoost model: Invalid cast"),
        ("model.bin", b"\x00\x01", "cannot tell the format of .*; give --format"),
        ("model.pkl", None, "cannot import a dict: not a model of a known framework"),
        ("model.pkl", b"not a pickle", "cannot unpickle"),
    ],
)
def test_files_that_are_no_model_are_refused(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    source = tmp_path / name
    if content is None:
        joblib.dump({"a": 1}, source)
    else:
        source.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        import_model(source, tmp_path / "repo", "m", trust_pickle=True)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "repo").exists()


def test_an_xgboost_softmax_booster_is_refused(tmp_path: Path) -> None:
    booster = xgb.train(
        {"objective": "multi:softmax", "num_class": 3},
        xgb.DMatrix(TRAIN[FEATURES], label=TRAIN["status"].astype("category").cat.codes),
        num_boost_round=3,
    )
    source = tmp_path / "softmax.ubj"
    booster.save_model(source)
    with pytest.raises(ConfigError, match="use multi:softprob"):
        import_model(source, tmp_path / "repo", "m")


def test_xgboost_regressor_pickle(tmp_path: Path) -> None:
    model = xgb.XGBRegressor(n_estimators=30).fit(TRAIN[FEATURES], TRAIN["arr_delay"])
    source = tmp_path / "regressor.pkl"
    joblib.dump(model, source)
    folder = import_model(source, tmp_path / "repo", "minutes", trust_pickle=True)
    metadata = ModelMetadata.read(folder)
    assert metadata.probabilities_output is None
    assert [f.name for f in declared(metadata)] == FEATURES

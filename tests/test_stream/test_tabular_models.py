"""The worker's view of a tabular model served elsewhere: the input its model.json names,
and the outputs it asks the server for and reads the answer from."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from streaminfer.errors import ConfigError
from streaminfer.models.errors import ModelNotFound
from streaminfer.models.features import BadFeatures
from streaminfer.models.metadata import (
    MAX_FILE_BYTES,
    Feature,
    ModelMetadata,
    Signature,
    TensorSpec,
)
from streaminfer.predictors.base import PredictRequest, PredictResult
from streaminfer.stream.pipeline import explain_all, tabulate_all
from streaminfer.stream.records import Request, Source
from streaminfer.stream.tabular import TabularModels
from streaminfer.stream.work import InputRecord, Work

FEATURES = [Feature(name="dep_delay"), Feature(name="distance")]
RECORD: dict[str, object] = {"distance": 900, "dep_delay": 12}


def write_version(repo: Path, name: str, metadata: ModelMetadata, labels: str = "") -> None:
    folder = repo / name / "1"
    folder.mkdir(parents=True)
    metadata.write(folder)
    if labels:
        (folder / "labels.txt").write_text(labels)


@pytest.fixture
def models(tmp_path: Path) -> TabularModels:
    """A classifier as MLServer's scikit-learn runtime serves it, and a regressor."""
    classifier = Signature(
        inputs=[TensorSpec(name="input-0", dtype="float64", shape=[-1, 2])],
        outputs=[
            TensorSpec(name="predict", dtype="string", shape=[-1]),
            TensorSpec(name="predict_proba", dtype="float64", shape=[-1, 3]),
        ],
    )
    write_version(
        tmp_path,
        "delays",
        ModelMetadata(
            signature=classifier,
            features=FEATURES,
            labels_file="labels.txt",
            probabilities_output="predict_proba",
            top_k=3,
        ),
        "late\non_time\nvery_late\n",
    )
    regressor = Signature(
        inputs=[TensorSpec(name=f.name, dtype="float32", shape=[-1]) for f in FEATURES],
        outputs=[
            TensorSpec(name="minutes", dtype="float32", shape=[-1]),
            TensorSpec(name="spread", dtype="float32", shape=[-1]),
        ],
    )
    write_version(tmp_path, "arrival", ModelMetadata(signature=regressor, features=FEATURES))
    write_version(tmp_path, "tensors", ModelMetadata(signature=regressor))
    return TabularModels(tmp_path)


def test_a_classifier_asks_for_its_probabilities_in_the_declared_input(
    models: TabularModels,
) -> None:
    model = models.get("delays", None)
    request = model.request(RECORD, PredictRequest(model="delays"))
    assert request.output_filter == ("predict_proba",)
    assert request.tensors is not None and list(request.tensors) == ["input-0"]
    np.testing.assert_array_equal(request.tensors["input-0"], np.array([[12.0, 900.0]]))
    assert request.tensors["input-0"].dtype == np.float64


def test_a_classifier_answer_is_ranked_with_its_class_names(models: TabularModels) -> None:
    served = PredictResult(
        "delays", 1, "kserve-http", outputs={"predict_proba": np.array([[0.25, 0.7, 0.05]])}
    )
    answer = models.get("delays", None).result(served, None)
    assert answer.outputs is None and answer.predictions is not None
    assert [(p.label, p.score) for p in answer.predictions] == [
        ("on_time", 0.7),
        ("late", 0.25),
        ("very_late", 0.05),
    ]


def test_a_regressor_asks_for_every_output_one_column_per_feature(
    models: TabularModels,
) -> None:
    request = models.get("arrival", 1).request(RECORD, PredictRequest(model="arrival"))
    assert request.output_filter == ("minutes", "spread")
    assert request.tensors is not None and sorted(request.tensors) == ["dep_delay", "distance"]


def test_a_model_without_features_takes_no_records_and_a_missing_version_is_unknown(
    models: TabularModels,
) -> None:
    with pytest.raises(BadFeatures, match="declares no features"):
        models.get("tensors", None)
    with pytest.raises(ModelNotFound, match="no version 2"):
        models.get("delays", 2)


@pytest.mark.timeout(60)  # a FIFO's model.json, once opened, held its reader for good
def test_only_a_model_the_repository_lists_is_read(models: TabularModels, tmp_path: Path) -> None:
    """A record's "model" named a path: absolute, with "..", or "/proc", listed and read
    outside the repository (and a FIFO there held the worker's thread for good)."""
    assert models.repo is not None
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    write_version(outside, "delays", ModelMetadata.read(models.repo / "delays" / "1"))
    (outside / "fifo" / "1").mkdir(parents=True)
    os.mkfifo(outside / "fifo" / "1" / "model.json")
    names = [
        str(models.repo / "delays"),
        f"../{outside.name}/delays",
        str(outside / "fifo"),
        "/proc",
        "delays/1/..",
        ".",
        "",
        "no-such-model",
    ]
    for name in names:
        with pytest.raises(ModelNotFound, match="is not in the repository"):
            models.get(name, None)
    assert models.get("delays", None).metadata.features == FEATURES


@pytest.mark.timeout(60)
def test_a_model_json_that_is_a_fifo_or_too_large_is_refused_unread(
    models: TabularModels, tmp_path: Path
) -> None:
    (tmp_path / "fifo" / "1").mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo" / "1" / "model.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        models.get("fifo", None)
    (tmp_path / "vast" / "1").mkdir(parents=True)
    vast = (tmp_path / "delays" / "1" / "model.json").read_bytes() + b" " * MAX_FILE_BYTES
    (tmp_path / "vast" / "1" / "model.json").write_bytes(vast)
    with pytest.raises(ConfigError, match=f"more than {MAX_FILE_BYTES}"):
        models.get("vast", None)


def served(*rows: list[float]) -> PredictResult:
    return PredictResult("delays", 1, "embedded", outputs={"predict_proba": np.array(rows)})


def test_a_batch_is_ranked_at_once_each_record_with_its_own_top_k(models: TabularModels) -> None:
    results = [served([0.25, 0.7, 0.05]), served([0.6, 0.3, 0.1])]
    models.get("delays", None).rank_all(results, [1, None])
    assert [[p.label for p in r.predictions or []] for r in results] == [
        ["on_time"],
        ["late", "on_time", "very_late"],
    ]
    assert all(r.outputs is None for r in results)


def test_a_batch_that_cannot_be_ranked_is_left_untouched(models: TabularModels) -> None:
    results = [served([0.25, 0.7, 0.05]), served([0.6, 0.3, 0.1], [0.1, 0.1, 0.8])]
    with pytest.raises(ValueError, match="3 rows"):
        models.get("delays", None).rank_all(results, [None, None])
    assert all(r.predictions is None and r.outputs is not None for r in results)


def test_explaining_a_batch_fails_only_the_record_that_breaks_it(models: TabularModels) -> None:
    def work(offset: int, result: PredictResult) -> Work:
        source = Source("in", 0, offset, None)
        done = Work(InputRecord(None, b"{}", [], source, 0.0))
        done.request = Request(features=dict(RECORD))
        done.predict = PredictRequest(model="delays")
        done.result = result
        return done

    broken = PredictResult("delays", 1, "embedded", outputs={"predict": np.array([1])})
    batch = [work(0, served([0.25, 0.7, 0.05])), work(1, broken), work(2, served([0.6, 0.3, 0.1]))]
    explain_all(models, batch)
    assert [w.error is None for w in batch] == [True, False, True]
    error = batch[1].error
    assert error is not None and error.reason == "internal_error" and "KeyError" in str(error)
    assert batch[2].result is not None and batch[2].result.predictions is not None
    assert batch[2].result.predictions[0].label == "late"


def routed(offset: int, model: str, features: dict[str, object]) -> Work:
    done = Work(InputRecord(None, b"{}", [], Source("in", 0, offset, None), 0.0))
    done.request = Request(features=features)
    done.predict = PredictRequest(model=model)
    return done


def test_a_batch_gets_one_input_array_and_each_bad_record_its_own_error(
    models: TabularModels,
) -> None:
    batch = [
        routed(0, "delays", {"dep_delay": 1, "distance": 100}),
        routed(1, "delays", {"dep_delay": 2}),  # no distance, and no default
        routed(2, "delays", {"dep_delay": 3, "distance": 300}),
        routed(3, "tensors", {"dep_delay": 4}),  # a model that takes no features
        routed(4, "arrival", {"dep_delay": 5, "distance": 500}),  # an input per feature
        routed(5, "arrival", {"dep_delay": 6, "distance": 600}),
    ]
    tabulate_all(models, batch)
    assert [w.error.reason if w.error else None for w in batch] == [
        None,
        "bad_features",
        None,
        "bad_features",
        None,
        None,
    ]
    for work, (delay, distance) in zip(batch[4:], [(5, 500), (6, 600)], strict=True):
        assert work.predict is not None and work.predict.tensors is not None
        assert {k: v.tolist() for k, v in work.predict.tensors.items()} == {
            "dep_delay": [delay],
            "distance": [distance],
        }
    assert "'distance'" in str(batch[1].error) and "declares no features" in str(batch[3].error)
    first, third = (batch[i].predict for i in (0, 2))
    assert first is not None and third is not None and first.tensors and third.tensors
    np.testing.assert_array_equal(first.tensors["input-0"], [[1.0, 100.0]])
    np.testing.assert_array_equal(third.tensors["input-0"], [[3.0, 300.0]])
    assert first.output_filter == ("predict_proba",)

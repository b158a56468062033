"""Tabular records: JSON objects become rows in declared order, bad ones fail naming the
feature, rows batch into either input layout, and outputs read as predictions or values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streaminfer.errors import ConfigError, RecordError
from streaminfer.models.features import (
    BadFeatures,
    check_features,
    classify_rows,
    feature_batch,
    feature_row,
    output_rows,
    record_answer,
    record_features,
    record_tensors,
    tabular_value,
)
from streaminfer.models.metadata import Feature, ModelMetadata, Signature, TensorSpec

NAMES = st.text(st.characters(categories=["L", "N"], max_codepoint=0x2FF), min_size=1, max_size=8)
FEATURE_LISTS = st.lists(NAMES, min_size=1, max_size=8, unique=True)
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32)


def packed(features: list[Feature], dtype: str = "float32", **extra: object) -> ModelMetadata:
    """A model with one input [N, F]."""
    return ModelMetadata(
        signature=Signature(
            inputs=[TensorSpec(name="input", dtype=dtype, shape=[-1, len(features)])],  # type: ignore[arg-type]
            outputs=[TensorSpec(name="probabilities", dtype="float32", shape=[-1, 2])],
        ),
        features=features,
        **extra,  # type: ignore[arg-type]
    )


def columns(specs: dict[str, tuple[str, list[int]]], features: list[Feature]) -> ModelMetadata:
    """A model with one input per feature."""
    return ModelMetadata(
        signature=Signature(
            inputs=[
                TensorSpec(name=n, dtype=d, shape=s)  # type: ignore[arg-type]
                for n, (d, s) in specs.items()
            ],
            outputs=[TensorSpec(name="variable", dtype="float32", shape=[-1, 1])],
        ),
        features=features,
    )


@given(FEATURE_LISTS, st.data())
def test_a_row_follows_the_declared_order_whatever_the_record_order(
    names: list[str], data: st.DataObject
) -> None:
    features = [Feature(name=n) for n in names]
    values = {n: data.draw(FINITE) for n in names}
    shuffled = dict(data.draw(st.permutations(list(values.items()))))
    row = feature_row(shuffled, features)
    assert row == tuple(values[n] for n in names)
    batch = feature_batch([row, row], packed(features))
    np.testing.assert_array_equal(batch["input"], np.array([row, row], dtype=np.float32))


@given(FEATURE_LISTS, st.data())
def test_a_missing_feature_takes_its_default_or_is_named(
    names: list[str], data: st.DataObject
) -> None:
    absent = data.draw(st.sampled_from(names))
    values = {n: 1.0 for n in names if n != absent}
    without_default = [Feature(name=n) for n in names]
    with pytest.raises(BadFeatures, match=f"missing feature {absent!r}"):
        feature_row(values, without_default)
    with pytest.raises(BadFeatures, match=f"missing feature {absent!r}"):
        feature_row({**values, absent: None}, without_default)  # null is missing too

    default = data.draw(FINITE)
    with_default = [Feature(name=n, default=default if n == absent else None) for n in names]
    row = feature_row(values, with_default)
    assert row[names.index(absent)] == default


@given(FEATURE_LISTS, NAMES)
def test_an_unknown_feature_is_named(names: list[str], extra: str) -> None:
    values: dict[str, object] = {n: 0 for n in names}
    values[extra + "_x"] = 1
    with pytest.raises(BadFeatures, match=f"unknown feature {extra + '_x'!r}"):
        feature_row(values, [Feature(name=n) for n in names])


@given(
    st.one_of(
        st.text(max_size=10),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
)
def test_a_non_number_is_named(value: object) -> None:
    features = [Feature(name="dep_delay"), Feature(name="distance")]
    with pytest.raises(BadFeatures, match="feature 'distance' must be a number") as caught:
        feature_row({"dep_delay": 3, "distance": value}, features)
    assert caught.value.reason == "bad_features"
    assert isinstance(caught.value, RecordError)  # dead-lettered, never retried


@pytest.mark.parametrize(
    ("feature", "value", "message"),
    [
        (Feature(name="n", dtype="int64"), 1.5, "must be an integer"),
        (Feature(name="n", dtype="int32"), 2**31, "is out of the int32 range"),
        (Feature(name="n", dtype="int64"), float(2**64), "is out of the int64 range"),
        (Feature(name="n", dtype="bool"), 2, "must be true, false, 0 or 1"),
        (Feature(name="n"), math.inf, "must be a finite number"),
        (Feature(name="n", dtype="float64"), math.nan, "must be a finite number"),
        (Feature(name="n"), 1e39, "is out of the float32 range"),
    ],
)
def test_values_must_fit_the_feature_type(feature: Feature, value: object, message: str) -> None:
    with pytest.raises(BadFeatures, match=f"feature 'n' {message}"):
        feature_row({"n": value}, [feature])


@pytest.mark.parametrize(
    ("feature", "value", "expected"),
    [
        (Feature(name="n", dtype="int64"), 2.0, 2),
        (Feature(name="n", dtype="int32"), -(2**31), -(2**31)),
        (Feature(name="n", dtype="bool"), 1, True),
        (Feature(name="n", dtype="bool"), False, False),
        (Feature(name="n"), True, 1.0),
        (Feature(name="n", dtype="float64"), 1e300, 1e300),
    ],
)
def test_values_are_converted_to_the_feature_type(
    feature: Feature, value: object, expected: object
) -> None:
    (converted,) = feature_row({"n": value}, [feature])
    assert converted == expected
    assert type(converted) is type(expected)


def test_record_forms() -> None:
    envelope = {"id": "f1", "model": "delays", "features": {"a": 1}}
    assert record_features(envelope) == {"a": 1}
    flat = {"id": "f1", "model": "delays", "a": 1}
    assert record_features(flat, ignore={"id", "model"}) == {"a": 1}
    assert record_features(flat) == flat
    with pytest.raises(BadFeatures, match="'features' must be an object"):
        record_features({"features": [1, 2]})
    with pytest.raises(BadFeatures, match="a tabular record is a JSON object, got list"):
        record_features([1, 2])


def test_columns_layout_makes_one_tensor_per_input_in_its_dtype() -> None:
    features = [
        Feature(name="distance"),
        Feature(name="carrier", dtype="int64"),
        Feature(name="overnight", dtype="bool", default=0),
    ]
    metadata = columns(
        {
            "carrier": ("int64", [-1]),
            "distance": ("float32", [-1, 1]),
            "overnight": ("bool", [-1, 1]),
        },
        features,
    )
    check_features(features, metadata.signature)
    rows = [
        feature_row({"distance": 950.5, "carrier": 3}, features),
        feature_row({"distance": 120, "carrier": 7, "overnight": True}, features),
    ]
    batch = feature_batch(rows, metadata)
    assert batch["carrier"].dtype == np.int64 and batch["carrier"].shape == (2,)
    np.testing.assert_array_equal(batch["carrier"], [3, 7])
    assert batch["distance"].dtype == np.float32 and batch["distance"].shape == (2, 1)
    np.testing.assert_array_equal(batch["distance"], [[950.5], [120.0]])
    np.testing.assert_array_equal(batch["overnight"], [[False], [True]])


@pytest.mark.parametrize(
    ("inputs", "features", "message"),
    [
        (
            {"input": ("float32", [-1, 3])},
            ["a", "b"],
            r"2 features fit neither one input of shape \[N, 2\]",
        ),
        ({"a": ("float32", [-1]), "c": ("float32", [-1])}, ["a", "b"], "fit neither"),
        ({"a": ("float32", [-1, 4]), "b": ("float32", [-1])}, ["a", "b"], "takes 4 numbers"),
        ({"a": ("string", [-1]), "b": ("float32", [-1])}, ["a", "b"], "cannot take one number"),
        ({"a": ("int64", [-1]), "b": ("float32", [-1])}, ["a", "b"], "'a' is float32 but"),
        ({"input": ("int64", [-1, 2])}, ["a", "b"], "'a' is float32 but input 'input' is int64"),
    ],
)
def test_features_that_do_not_fit_the_inputs_are_refused(
    inputs: dict[str, tuple[str, list[int]]], features: list[str], message: str
) -> None:
    declared = [Feature(name=n) for n in features]
    metadata = columns(inputs, declared)
    with pytest.raises(ConfigError, match=message):
        check_features(declared, metadata.signature)


def test_integer_features_fit_an_integer_input() -> None:
    declared = [Feature(name="a", dtype="int64"), Feature(name="b", dtype="bool")]
    metadata = packed(declared, dtype="int64")
    check_features(declared, metadata.signature)
    batch = feature_batch([feature_row({"a": 4, "b": True}, declared)], metadata)
    np.testing.assert_array_equal(batch["input"], np.array([[4, 1]], dtype=np.int64))


def test_classifier_outputs_rank_classes_with_their_names() -> None:
    metadata = packed([Feature(name="a")], probabilities_output="probabilities", top_k=2)
    outputs = {
        "label": np.array([1, 0]),
        "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32),
    }
    ranked = classify_rows(outputs, metadata, ["on_time", "late"], k=None)
    assert [[p.label for p in row] for row in ranked] == [["late", "on_time"], ["on_time", "late"]]
    assert ranked[0][0].score == pytest.approx(0.8)
    assert [len(r) for r in classify_rows(outputs, metadata, None, k=1)] == [1, 1]

    value = tabular_value(outputs, metadata, ["on_time", "late"], k=1)
    assert json.loads(json.dumps(value)) == [
        {"predictions": [{"class_id": 1, "label": "late", "score": pytest.approx(0.8)}]},
        {"predictions": [{"class_id": 0, "label": "on_time", "score": pytest.approx(0.9)}]},
    ]


def test_regressor_outputs_are_split_per_row() -> None:
    metadata = packed([Feature(name="a")])  # no probabilities output: a regressor
    outputs = {
        "variable": np.array([[12.5], [-3.0]], dtype=np.float32),
        "interval": np.array([[1.0, 2.0], [3.0, 4.0]]),
    }
    rows = output_rows(outputs)
    np.testing.assert_array_equal(rows[1]["interval"], [3.0, 4.0])
    assert json.loads(json.dumps(tabular_value(outputs, metadata))) == [
        {"outputs": {"variable": [12.5], "interval": [1.0, 2.0]}},
        {"outputs": {"variable": [-3.0], "interval": [3.0, 4.0]}},
    ]
    with pytest.raises(ConfigError, match="disagree on the batch size"):
        output_rows({"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ConfigError, match="not a classifier"):
        classify_rows(outputs, metadata, None, None)


def test_model_json_lists_features_as_names_or_objects() -> None:
    signature = {"inputs": [], "outputs": []}
    metadata = ModelMetadata.model_validate(
        {"signature": signature, "features": ["a", {"name": "b", "dtype": "int64", "default": 2}]}
    )
    assert metadata.features == [Feature(name="a"), Feature(name="b", dtype="int64", default=2)]
    assert ModelMetadata.model_validate_json(metadata.model_dump_json()) == metadata
    with pytest.raises(ValidationError, match="features listed twice: a"):
        ModelMetadata.model_validate({"signature": signature, "features": ["a", "b", "a"]})


def test_one_record_as_a_tensor_request_and_its_answer() -> None:
    features = [Feature(name="a"), Feature(name="b", default=2)]
    metadata = packed(features, probabilities_output="probabilities")
    tensors = record_tensors({"a": 1}, metadata)
    np.testing.assert_array_equal(tensors["input"], np.array([[1.0, 2.0]], dtype=np.float32))
    with pytest.raises(BadFeatures, match="missing feature 'a'"):
        record_tensors({"b": 1}, metadata)

    outputs = {"probabilities": np.array([[0.3, 0.7]])}
    ranked = record_answer(outputs, metadata, ["no", "yes"], k=None)
    assert [(p.label, p.score) for p in ranked] == [("yes", 0.7), ("no", 0.3)]  # type: ignore[union-attr]
    regressor = packed(features)
    assert record_answer({"variable": np.array([[4.0]])}, regressor, None, None) == {
        "variable": pytest.approx(np.array([[4.0]]))
    }

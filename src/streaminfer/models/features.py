"""Tabular records: named features in, one input row out; a classifier's or regressor's
outputs back as what a user reads.

A model that declares ``features`` in ``model.json`` takes JSON records, either
``{"features": {"dep_delay": 12, ...}}`` or the flat object itself.  Each record becomes
one row in the declared order; a feature the record lacks takes its default, and a
missing one without default, an unknown name, or a value that is not a number of the
feature's type is a ``BadFeatures`` record error naming the feature.  (``null`` counts as
missing; ``true``/``false`` count as 1/0.)

Rows reach the model in one of two input layouts, fixed when the model is added:

- *packed*: one input ``[N, F]`` holds the F features side by side (what scikit-learn,
  XGBoost and LightGBM converters make from a numeric matrix);
- *columns*: one input per feature, named after it, ``[N]`` or ``[N, 1]`` (converters fed
  a DataFrame of mixed types).

Nothing here does I/O; the worker and the server call these per record and per batch.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from streaminfer.errors import ConfigError, RecordError
from streaminfer.models.metadata import Feature, ModelMetadata, Signature, TensorSpec
from streaminfer.models.postprocess import Prediction, rank
from streaminfer.types import Tensors

Row = tuple[float | int | bool, ...]

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class BadFeatures(RecordError):
    """A tabular record lacks a feature, names an unknown one, or holds a non-number."""

    reason = "bad_features"


def check_features(features: Sequence[Feature], signature: Signature) -> None:
    """Raise ``ConfigError`` unless the features fit the inputs in one of the two layouts."""
    if not features:
        raise ConfigError("a tabular model declares at least one feature")
    if _is_packed(features, signature):
        for feature in features:
            _check_fits(feature, signature.inputs[0])
        return
    if sorted(f.name for f in features) != sorted(i.name for i in signature.inputs):
        raise ConfigError(
            f"{len(features)} features fit neither one input of shape [N, {len(features)}] "
            f"nor inputs named after them; the model's inputs are {_describe(signature)}"
        )
    by_name = {f.name: f for f in features}
    for spec in signature.inputs:
        if spec.dtype == "string" or len(spec.shape) not in (1, 2) or spec.shape[1:] == [0]:
            raise ConfigError(
                f"input {spec.name!r} ({spec.dtype} {spec.shape}) cannot take one number per row"
            )
        if len(spec.shape) == 2 and spec.shape[1] not in (1, -1):
            raise ConfigError(f"input {spec.name!r} takes {spec.shape[1]} numbers per row, not 1")
        _check_fits(by_name[spec.name], spec)


def record_features(document: object, ignore: Collection[str] = ()) -> Mapping[str, object]:
    """The feature values of a parsed JSON record: its ``features`` object, or the object.

    In the flat form, keys in ``ignore`` (a record's routing keys such as ``model``) are
    not features.
    """
    if not isinstance(document, Mapping):
        raise BadFeatures(f"a tabular record is a JSON object, got {type(document).__name__}")
    if "features" in document:
        values = document["features"]
        if not isinstance(values, Mapping):
            raise BadFeatures("'features' must be an object of named values")
        return values
    return {k: v for k, v in document.items() if k not in ignore}


def feature_row(values: Mapping[str, object], features: Sequence[Feature]) -> Row:
    """One row in declared order; raises ``BadFeatures`` naming the first bad feature."""
    declared = {f.name for f in features}
    unknown = sorted(str(k) for k in values if k not in declared)
    if unknown:
        raise BadFeatures(f"unknown feature {unknown[0]!r}" + _others(unknown))
    missing = [f.name for f in features if values.get(f.name) is None and f.default is None]
    if missing:
        raise BadFeatures(f"missing feature {missing[0]!r}" + _others(missing))
    return tuple(_value(feature, values.get(feature.name)) for feature in features)


def feature_batch(rows: Sequence[Row], metadata: ModelMetadata) -> Tensors:
    """The model's input tensors for a batch of rows (axis 0 is the row)."""
    features = metadata.features
    if not features:
        raise ConfigError("the model declares no features")
    signature = metadata.signature
    if _is_packed(features, signature):
        spec = signature.inputs[0]
        return {spec.name: np.array(rows, dtype=spec.dtype).reshape(len(rows), len(features))}
    columns = {f.name: index for index, f in enumerate(features)}
    tensors: Tensors = {}
    for spec in signature.inputs:
        column = np.array([row[columns[spec.name]] for row in rows], dtype=spec.dtype)
        tensors[spec.name] = column.reshape(len(rows), 1) if len(spec.shape) == 2 else column
    return tensors


def record_tensors(values: Mapping[str, object], metadata: ModelMetadata) -> Tensors:
    """One record's feature values as a one-row tensor request (``BadFeatures`` if bad).

    Predictors batch such requests like any tensor requests, locally or over the wire.
    """
    return feature_batch([feature_row(values, metadata.features or [])], metadata)


def record_answer(
    outputs: Tensors, metadata: ModelMetadata, class_names: list[str] | None, k: int | None
) -> list[Prediction] | Tensors:
    """What one record's outputs (one row each) mean: ranked classes or the raw outputs."""
    if metadata.probabilities_output is None:
        return outputs
    return classify_rows(outputs, metadata, class_names, k)[0]


def classify_rows(
    outputs: Tensors, metadata: ModelMetadata, class_names: list[str] | None, k: int | None
) -> list[list[Prediction]]:
    """A classifier's batch outputs as each row's top-k classes by probability, best first."""
    name = metadata.probabilities_output
    if name is None:
        raise ConfigError("the model names no probabilities output; it is not a classifier")
    probabilities = np.asarray(outputs[name], dtype=np.float64)
    return rank(probabilities, k or metadata.top_k, class_names)


def output_rows(outputs: Tensors) -> list[Tensors]:
    """A regressor's batch outputs as one ``{output: value}`` per row."""
    counts = {len(array) for array in outputs.values()}
    if len(counts) != 1:
        raise ConfigError(f"outputs disagree on the batch size: {sorted(counts)}")
    return [
        {name: array[index] for name, array in outputs.items()} for index in range(counts.pop())
    ]


def tabular_value(
    outputs: Tensors,
    metadata: ModelMetadata,
    class_names: list[str] | None = None,
    k: int | None = None,
) -> list[dict[str, object]]:
    """Per row, the JSON a user reads: ``{"predictions": [{"class_id", "label", "score"}...]}``
    for a classifier, ``{"outputs": {name: value}}`` for a regressor."""
    if metadata.probabilities_output is not None:
        return [
            {"predictions": [p.as_dict() for p in ranked]}
            for ranked in classify_rows(outputs, metadata, class_names, k)
        ]
    return [
        {"outputs": {name: value.tolist() for name, value in row.items()}}
        for row in output_rows(outputs)
    ]


def _value(feature: Feature, value: object) -> float | int | bool:
    """A JSON value as the feature's type, or its default when absent."""
    if value is None:
        value = feature.default
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float):
        raise BadFeatures(
            f"feature {feature.name!r} must be a number, got {type(value).__name__} {value!r:.40}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise BadFeatures(f"feature {feature.name!r} must be a finite number, got {value}")
    if feature.dtype == "bool":
        if value not in (0, 1):
            raise BadFeatures(f"feature {feature.name!r} must be true, false, 0 or 1, got {value}")
        return bool(value)
    if feature.dtype in _INT_RANGES:
        if value != int(value):
            raise BadFeatures(f"feature {feature.name!r} must be an integer, got {value}")
        low, high = _INT_RANGES[feature.dtype]
        if not low <= int(value) <= high:
            raise BadFeatures(f"feature {feature.name!r} is out of the {feature.dtype} range")
        return int(value)
    if feature.dtype == "float32" and abs(value) > _FLOAT32_MAX:
        raise BadFeatures(f"feature {feature.name!r} is out of the float32 range")
    return float(value)


def _check_fits(feature: Feature, spec: TensorSpec) -> None:
    """A fractional feature cannot go into an integer input without losing its fraction."""
    if feature.dtype.startswith("float") and not spec.dtype.startswith("float"):
        raise ConfigError(
            f"feature {feature.name!r} is {feature.dtype} but input {spec.name!r} is {spec.dtype}"
        )


def _is_packed(features: Sequence[Feature], signature: Signature) -> bool:
    if len(signature.inputs) != 1:
        return False
    spec = signature.inputs[0]
    numeric = spec.dtype not in ("string", "bool")
    return numeric and len(spec.shape) == 2 and spec.shape[1] in (len(features), -1)


def _describe(signature: Signature) -> str:
    return ", ".join(f"{i.name} {i.dtype} {i.shape}" for i in signature.inputs)


def _others(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""

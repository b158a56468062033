"""scikit-learn, XGBoost and LightGBM models converted to ONNX (the ``sklearn`` extra).

Each converter returns the ONNX graph with one float32 input ``input`` ``[N, features]``
and, for classifiers, the outputs ``label`` and ``probabilities`` ``[N, classes]`` (no
ZipMap), together with the framework's own prediction functions, which the caller uses
to verify the conversion.  The frameworks are imported only here and only when a model
is imported, so the core install never needs them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from streaminfer.errors import ConfigError
from streaminfer.extras import require

log = logging.getLogger(__name__)

INPUT = "input"
EXTRA = "sklearn"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


@dataclass(frozen=True)
class Converted:
    """A converted model and what its framework says, for verification."""

    model: onnx.ModelProto
    framework: str
    feature_names: list[str] | None  # None: the framework does not know them
    class_names: list[str] | None  # None: a regressor
    # Framework predictions on float32 rows: per-class probabilities [N, classes] for a
    # classifier, outputs [N] or [N, k] for a regressor.
    predict: Callable[[np.ndarray], np.ndarray]
    # The framework's own label per row (a classifier only), as class-name strings.
    predict_labels: Callable[[np.ndarray], list[str]] | None


def load_pickle(path: Path, trust_pickle: bool) -> object:
    """Unpickle (joblib or pickle) only when the user says they trust the file."""
    if not trust_pickle:
        raise ConfigError(
            f"{path} is a pickle, and loading a pickle runs code inside it; "
            "pass --trust-pickle only if you trust whoever made it"
        )
    log.warning("loading pickle %s: this runs any code it contains", path)
    joblib = require("joblib", EXTRA)
    try:
        return joblib.load(path)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{path} needs module {exc.name}: pip install 'streaminfer[{EXTRA}]'"
        ) from exc
    except Exception as exc:  # unpickling raises whatever the pickled code raises
        raise ConfigError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from exc


def convert(obj: object) -> Converted:
    """Dispatch on the object's type: XGBoost, LightGBM, else scikit-learn."""
    module = type(obj).__module__.split(".")[0]
    if module == "xgboost":
        return convert_xgboost(obj)
    if module == "lightgbm":
        return convert_lightgbm(obj)
    if module == "sklearn" or hasattr(obj, "fit"):
        return convert_sklearn(obj)
    raise ConfigError(f"cannot import a {type(obj).__name__}: not a model of a known framework")


def read_xgboost(path: Path) -> object:
    xgb = require("xgboost", EXTRA)
    try:
        return xgb.Booster(model_file=str(path))
    except xgb.core.XGBoostError as exc:
        # "[20:03:35] /path/to/json.h:88: Invalid cast ..." -> "Invalid cast ..."
        reason = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", first_line(exc))
        raise ConfigError(f"{path} is not an XGBoost model: {reason}") from exc


def read_lightgbm(path: Path) -> object:
    lgb = require("lightgbm", EXTRA)
    try:
        return lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as exc:
        raise ConfigError(f"{path} is not a LightGBM model: {first_line(exc)}") from exc


def convert_sklearn(estimator: Any) -> Converted:
    """A fitted estimator or pipeline; classifiers convert without ZipMap."""
    skl2onnx = require("skl2onnx", EXTRA)
    data_types = require("skl2onnx.common.data_types", EXTRA)
    preprocessing = require("sklearn.preprocessing", EXTRA)
    width = getattr(estimator, "n_features_in_", None)
    if width is None:
        raise ConfigError(f"the {type(estimator).__name__} is not fitted (no n_features_in_)")
    classes = getattr(estimator, "classes_", None)
    options = {type(_final_step(estimator)): {"zipmap": False}} if classes is not None else None
    try:
        model = skl2onnx.convert_sklearn(
            estimator,
            initial_types=[(INPUT, data_types.FloatTensorType([None, width]))],
            options=options,
            custom_conversion_functions={preprocessing.StandardScaler: _standard_scaler},
        )
    except Exception as exc:  # skl2onnx raises several types for unsupported models
        raise ConfigError(f"skl2onnx cannot convert it: {first_line(exc)}") from exc
    names = _names(getattr(estimator, "feature_names_in_", None))

    def framed(rows: np.ndarray) -> Any:
        """Rows as the estimator was fitted: a DataFrame when it knows column names."""
        if names is None:
            return rows
        return require("pandas", EXTRA).DataFrame(rows, columns=names)

    if classes is None:
        regress = _regression(lambda rows: estimator.predict(framed(rows)))
        return Converted(model, "scikit-learn", names, None, regress, None)
    return Converted(
        model,
        "scikit-learn",
        names,
        [str(c) for c in classes],
        lambda rows: np.asarray(estimator.predict_proba(framed(rows)), dtype=np.float64),
        lambda rows: [str(v) for v in estimator.predict(framed(rows))],
    )


def _standard_scaler(scope: Any, operator: Any, container: Any) -> None:
    """StandardScaler in double with its exact mean and scale, rounded to float32 once.

    scikit-learn scales in float64 and then casts to float32 for its trees; skl2onnx's
    own converter rounds the mean to float32 first, which moves values that sit next to
    a split threshold to its other side.
    """
    scaler = operator.raw_operator
    width = scaler.n_features_in_
    mean = scaler.mean_ if scaler.with_mean else np.zeros(width)
    scale = scaler.scale_ if scaler.with_std else np.ones(width)
    names = {n: scope.get_unique_variable_name(n) for n in ("x64", "mean", "scale", "c", "z")}
    for name, values in (("mean", mean), ("scale", scale)):
        container.add_initializer(names[name], onnx.TensorProto.DOUBLE, [width], list(values))
    x = operator.inputs[0].full_name
    container.add_node("Cast", x, names["x64"], to=onnx.TensorProto.DOUBLE)
    container.add_node("Sub", [names["x64"], names["mean"]], names["c"])
    container.add_node("Div", [names["c"], names["scale"]], names["z"])
    container.add_node("Cast", names["z"], operator.outputs[0].full_name, to=onnx.TensorProto.FLOAT)


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return _final_step(steps[-1][1]) if steps else estimator


def convert_xgboost(obj: Any) -> Converted:
    """An XGBoost booster or scikit-learn wrapper (XGBClassifier, XGBRegressor)."""
    xgb = require("xgboost", EXTRA)
    booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
    names = booster.feature_names
    # The converter reads split features as "f<index>", so it gets an unnamed copy.
    unnamed = booster.copy()
    unnamed.feature_names = None
    width = booster.num_features()
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective == "multi:softmax":
        raise ConfigError("a multi:softmax booster predicts no probabilities; use multi:softprob")
    model = _onnxmltools("convert_xgboost", unnamed, width)

    def raw(rows: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(xgb.DMatrix(rows, feature_names=names)))

    if not objective.startswith(("binary:logistic", "multi:")):
        return Converted(model, "XGBoost", _names(names), None, _regression(raw), None)
    classes = getattr(obj, "classes_", None)
    return _booster_classifier(model, "XGBoost", names, raw, classes)


def convert_lightgbm(obj: Any) -> Converted:
    """A LightGBM booster or scikit-learn wrapper (LGBMClassifier, LGBMRegressor)."""
    booster = obj.booster_ if hasattr(obj, "booster_") else obj
    names = booster.feature_name()
    if all(re.fullmatch(r"Column_\d+", n) for n in names):
        names = None  # LightGBM's placeholders for a model trained without names
    objective = booster.dump_model()["objective"].split()[0]
    model = _onnxmltools("convert_lightgbm", booster, booster.num_feature(), zipmap=False)

    def raw(rows: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(rows))

    if objective not in ("binary", "multiclass", "multiclassova"):
        return Converted(model, "LightGBM", _names(names), None, _regression(raw), None)
    classes = getattr(obj, "classes_", None)
    return _booster_classifier(model, "LightGBM", names, raw, classes)


def _booster_classifier(
    model: onnx.ModelProto,
    framework: str,
    names: list[str] | None,
    raw: Callable[[np.ndarray], np.ndarray],
    classes: Any,
) -> Converted:
    """A booster predicts P(class 1) for two classes and [N, classes] for more."""

    def probabilities(rows: np.ndarray) -> np.ndarray:
        p = raw(rows).astype(np.float64)
        return np.stack([1 - p, p], axis=1) if p.ndim == 1 else p

    outputs = {o.name: o for o in model.graph.output}
    dims = outputs["probabilities"].type.tensor_type.shape.dim
    count = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else 2
    class_names = (
        [str(c) for c in classes] if classes is not None else [str(i) for i in range(count)]
    )

    def labels(rows: np.ndarray) -> list[str]:
        return [class_names[i] for i in probabilities(rows).argmax(axis=1)]

    return Converted(model, framework, _names(names), class_names, probabilities, labels)


def _onnxmltools(function: str, model: Any, width: int, **options: Any) -> onnx.ModelProto:
    onnxmltools = require("onnxmltools", EXTRA)
    data_types = require("onnxmltools.convert.common.data_types", EXTRA)
    try:
        converted: onnx.ModelProto = getattr(onnxmltools, function)(
            model, initial_types=[(INPUT, data_types.FloatTensorType([None, width]))], **options
        )
    except Exception as exc:  # the converters raise several types for unsupported models
        raise ConfigError(f"onnxmltools cannot convert it: {first_line(exc)}") from exc
    return converted


def _regression(predict: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rows: np.asarray(predict(rows), dtype=np.float64)


def _names(names: Any) -> list[str] | None:
    return [str(n) for n in names] if names is not None else None


def first_line(exc: BaseException) -> str:
    """An exception's message on one line, for a one-line refusal."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

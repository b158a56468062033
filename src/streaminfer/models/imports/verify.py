"""Whether a converted model computes what its framework computes, on sample inputs.

Samples are given (``--sample``) or generated; the converted model runs in ONNX Runtime
and the framework on the same values.  Tabular models: every class probability within
``PROBABILITY_TOLERANCE`` and every label equal (except where two classes tie within it),
regressors within ``REGRESSION_RTOL``.  Tensor models (TensorFlow): every output within
``TENSOR_TOLERANCE``, absolute and relative.  A disagreement is a ``ConfigError`` that
counts the rows and shows the worst.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from streaminfer.errors import ConfigError
from streaminfer.models.add import load_session
from streaminfer.models.imports import tabular
from streaminfer.models.metadata import Feature, Signature
from streaminfer.types import Tensors

PROBABILITY_TOLERANCE = 1e-5
REGRESSION_RTOL = 1e-4
REGRESSION_ATOL = 1e-5
TENSOR_TOLERANCE = 1e-4
GENERATED_ROWS = 512
GENERATED_BATCH = 4
OPEN_DIMENSION = 32  # a generated tensor's size along a dynamic axis other than the batch


def verify_tabular(converted: tabular.Converted, model: onnx.ModelProto, rows: np.ndarray) -> None:
    """Raise ``ConfigError`` unless the ONNX model and the framework agree on ``rows``."""
    session = load_session(model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {tabular.INPUT: rows}), strict=True))
    # The framework gets the rows as users call it, in float64 (exact for float32 values).
    want = converted.predict(rows.astype(np.float64))
    what = f"the converted model disagrees with {converted.framework}"
    if converted.class_names is None:
        got = np.asarray(outputs[names[0]], dtype=np.float64)
        if got.size != want.size:
            raise ConfigError(f"{what}: outputs of shape {got.shape}, expected {want.shape}")
        got = got.reshape(want.shape)
        close = np.isclose(got, want, rtol=REGRESSION_RTOL, atol=REGRESSION_ATOL)
        if not close.all():
            row = int(np.argwhere(~close)[0][0])
            raise ConfigError(
                f"{what} on {int((~close).reshape(len(rows), -1).any(axis=1).sum())} of "
                f"{len(rows)} sample rows (row {row}: {got[row]} vs {want[row]})"
            )
        return
    got = np.asarray(outputs["probabilities"], dtype=np.float64)
    if got.shape != want.shape:
        raise ConfigError(f"{what}: probabilities of shape {got.shape}, expected {want.shape}")
    difference = np.abs(got - want).max(axis=1)
    if difference.max() > PROBABILITY_TOLERANCE:
        row = int(difference.argmax())
        raise ConfigError(
            f"{what} on {int((difference > PROBABILITY_TOLERANCE).sum())} of {len(rows)} "
            f"sample rows (row {row}: probabilities differ by {difference[row]:.2g})"
        )
    assert converted.predict_labels is not None
    ours = [converted.class_names[i] for i in got.argmax(axis=1)]
    theirs = converted.predict_labels(rows.astype(np.float64))
    ordered = np.sort(want, axis=1)
    # Where two classes tie within the tolerance either label is right.
    clear = ordered[:, -1] - ordered[:, -2] > 2 * PROBABILITY_TOLERANCE
    wrong = [i for i in range(len(rows)) if clear[i] and ours[i] != theirs[i]]
    if wrong:
        row = wrong[0]
        raise ConfigError(
            f"{what} on the label of {len(wrong)} of {len(rows)} sample rows "
            f"(row {row}: {ours[row]!r} vs {theirs[row]!r})"
        )


def verify_tensors(
    predict: Callable[[Tensors], Tensors], model: onnx.ModelProto, inputs: Tensors
) -> None:
    """Raise ``ConfigError`` unless every output agrees within ``TENSOR_TOLERANCE``."""
    session = load_session(model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, inputs), strict=True))
    want = predict(inputs)
    if sorted(want) != sorted(got):
        raise ConfigError(f"the converted model outputs {sorted(got)}, TensorFlow {sorted(want)}")
    for name in names:
        if got[name].shape != want[name].shape:
            raise ConfigError(
                f"output {name!r} has shape {got[name].shape}, TensorFlow's {want[name].shape}"
            )
        difference = np.abs(got[name].astype(np.float64) - want[name].astype(np.float64))
        allowed = TENSOR_TOLERANCE * np.maximum(1.0, np.abs(want[name].astype(np.float64)))
        wrong = int((difference > allowed).sum())
        if wrong:
            raise ConfigError(
                f"the converted model disagrees with TensorFlow on output {name!r}: "
                f"{wrong} values differ, by up to {difference.max():.2g}"
            )


def generated_rows(width: int, count: int = GENERATED_ROWS, seed: int = 0) -> np.ndarray:
    """Rows spread over magnitudes 0.01 to 10,000 of either sign, one in ten zero, so that
    splits on small and large features alike are crossed."""
    rng = np.random.default_rng(seed)
    magnitude = 10 ** rng.uniform(-2, 4, size=(count, width))
    sign = rng.choice([-1.0, 1.0], size=(count, width))
    zero = rng.random((count, width)) < 0.1
    return np.where(zero, 0.0, sign * magnitude).astype(np.float32)


def generated_tensors(signature: Signature, seed: int = 0) -> Tensors:
    """Random inputs for a signature: a batch of ``GENERATED_BATCH``, normal floats,
    small integers; other dynamic axes get ``OPEN_DIMENSION``."""
    rng = np.random.default_rng(seed)
    inputs: Tensors = {}
    for spec in signature.inputs:
        shape = [
            (GENERATED_BATCH if axis == 0 else OPEN_DIMENSION) if d < 0 else d
            for axis, d in enumerate(spec.shape)
        ]
        if spec.dtype.startswith("float"):
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            inputs[spec.name] = rng.random(shape) < 0.5
        elif spec.dtype == "string":
            raise ConfigError(f"input {spec.name!r} takes strings: give --sample")
        else:
            inputs[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return inputs


def read_tensor_sample(path: Path, signature: Signature) -> Tensors:
    """A ``.npz`` file with one array per input name."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read sample {path}: {exc}") from exc
    wanted = [i.name for i in signature.inputs]
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise ConfigError(f"sample {path} has no array {missing[0]!r} (inputs: {wanted})")
    return {
        spec.name: arrays[spec.name].astype(spec.dtype if spec.dtype != "string" else object)
        for spec in signature.inputs
    }


def read_rows(path: Path, features: list[Feature]) -> np.ndarray:
    """A ``.npy`` matrix, or a CSV whose header names the features (any column order)."""
    names = [f.name for f in features]
    try:
        if path.suffix == ".npy":
            rows = np.load(path, allow_pickle=False)
        else:
            with path.open(newline="") as handle:
                header, *body = list(csv.reader(handle))
            missing = [n for n in names if n not in header]
            if missing:
                raise ConfigError(f"sample {path} has no column {missing[0]!r}")
            columns = [header.index(n) for n in names]
            rows = np.array([[float(r[c]) for c in columns] for r in body if r])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read sample {path}: {exc}") from exc
    if rows.ndim != 2 or rows.shape[1] != len(names) or len(rows) == 0:
        raise ConfigError(
            f"sample {path} must hold rows of {len(names)} features, got {rows.shape}"
        )
    return rows.astype(np.float32)

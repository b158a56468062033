"""``models import``: a model trained in another framework becomes an ordinary version.

The source is read (a pickle only with ``trust_pickle``: unpickling runs code), converted
to ONNX, and verified: on sample rows (given, or generated across magnitudes from 0.01 to
10,000) the converted model must agree with the framework — classifiers on every label
and on each class probability within ``PROBABILITY_TOLERANCE``, regressors within
``REGRESSION_RTOL`` — or the import fails and writes nothing.  The version then lands
as ``models add`` writes one: ``model.onnx``, ``model.json`` (signature, features, the
probabilities output) and, for classifiers, ``labels.txt`` with the class names.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from streaminfer.errors import ConfigError
from streaminfer.models.add import (
    LABELS_FILE,
    ModelFiles,
    load_session,
    read_signature,
    write_model_version,
)
from streaminfer.models.imports import tabular
from streaminfer.models.metadata import Feature, ModelMetadata

Format = Literal["sklearn", "xgboost", "lightgbm"]
FORMATS: tuple[Format, ...] = ("sklearn", "xgboost", "lightgbm")

PROBABILITY_TOLERANCE = 1e-5
REGRESSION_RTOL = 1e-4
REGRESSION_ATOL = 1e-5
GENERATED_ROWS = 512

_SUFFIX_FORMATS: dict[str, Format] = {".json": "xgboost", ".ubj": "xgboost", ".txt": "lightgbm"}


def import_model(
    source: Path,
    repo: Path,
    name: str,
    version: int | None = None,
    *,
    format: Format | None = None,
    trust_pickle: bool = False,
    sample: Path | None = None,
    features: list[Feature] | None = None,
) -> Path:
    """Convert, verify and write ``source`` as a new version of ``repo/name``."""
    converted = tabular.convert(_read(source, format, trust_pickle))
    model = converted.model
    _open_batch_dimension(model)
    signature = read_signature(model)
    width = signature.inputs[0].shape[-1]
    features = _features(features, converted.feature_names, width)
    rows = _read_sample(sample, features) if sample else generated_rows(width)
    verify(converted, model, rows)
    classifier = converted.class_names is not None
    metadata = ModelMetadata(
        signature=signature,
        features=features,
        labels_file=LABELS_FILE if classifier else None,
        probabilities_output="probabilities" if classifier else None,
        top_k=len(converted.class_names or []) or 5,
    )
    return write_model_version(
        repo, name, version, ModelFiles(model, converted.class_names), metadata
    )


def verify(converted: tabular.Converted, model: onnx.ModelProto, rows: np.ndarray) -> None:
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


def generated_rows(width: int, count: int = GENERATED_ROWS, seed: int = 0) -> np.ndarray:
    """Rows spread over magnitudes 0.01 to 10,000 of either sign, one in ten zero, so that
    splits on small and large features alike are crossed."""
    rng = np.random.default_rng(seed)
    magnitude = 10 ** rng.uniform(-2, 4, size=(count, width))
    sign = rng.choice([-1.0, 1.0], size=(count, width))
    zero = rng.random((count, width)) < 0.1
    return np.where(zero, 0.0, sign * magnitude).astype(np.float32)


def _read(source: Path, format: Format | None, trust_pickle: bool) -> object:
    if not source.exists():
        raise ConfigError(f"{source} does not exist")
    if source.suffix in tabular.PICKLE_SUFFIXES or format == "sklearn":
        return tabular.load_pickle(source, trust_pickle)
    format = format or _SUFFIX_FORMATS.get(source.suffix)
    if format == "xgboost":
        return tabular.read_xgboost(source)
    if format == "lightgbm":
        return tabular.read_lightgbm(source)
    raise ConfigError(f"cannot tell the format of {source}; give --format ({', '.join(FORMATS)})")


def _features(given: list[Feature] | None, known: list[str] | None, width: int) -> list[Feature]:
    """``--features`` wins over the names the framework kept; unnamed columns are f0, f1..."""
    if given is not None:
        if len(given) != width:
            raise ConfigError(f"{len(given)} features given for a model of {width}")
        return given
    return [Feature(name=n) for n in known or [f"f{i}" for i in range(width)]]


def _read_sample(path: Path, features: list[Feature]) -> np.ndarray:
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


def _open_batch_dimension(model: onnx.ModelProto) -> None:
    """Converters sometimes declare a fixed batch of 1 on outputs; every output is [N, ...]."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "N"

"""``models import``: a model trained in another framework becomes an ordinary version.

The source is read (a pickle only with ``trust_pickle``: unpickling runs code), converted
to ONNX (``tabular`` for scikit-learn, XGBoost and LightGBM, ``tensorflow`` for
SavedModels and Keras files), and verified against the framework on sample inputs
(``verify``), or the import fails and writes nothing.  The version then lands as
``models add`` writes one: ``model.onnx`` and ``model.json``, plus for tabular models the
features and probabilities output, and for classifiers ``labels.txt`` with the class names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx

from streaminfer.errors import ConfigError
from streaminfer.models.add import LABELS_FILE, ModelFiles, read_signature, write_model_version
from streaminfer.models.imports import tabular, verify
from streaminfer.models.metadata import Feature, ModelMetadata

Format = Literal["savedmodel", "keras", "sklearn", "xgboost", "lightgbm"]
FORMATS: tuple[Format, ...] = ("savedmodel", "keras", "sklearn", "xgboost", "lightgbm")

_SUFFIX_FORMATS: dict[str, Format] = {
    ".keras": "keras",
    ".json": "xgboost",
    ".ubj": "xgboost",
    ".txt": "lightgbm",
    **{suffix: "sklearn" for suffix in tabular.PICKLE_SUFFIXES},
}


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
    format = format or detect_format(source)
    if format in ("savedmodel", "keras"):
        if features is not None:
            raise ConfigError("--features names the columns of tabular models only")
        return _import_tensorflow(source, format, repo, name, version, sample)
    return _import_tabular(source, format, trust_pickle, repo, name, version, sample, features)


def detect_format(source: Path) -> Format:
    """The format a path's name or content shows; ConfigError when it shows none."""
    if not source.exists():
        raise ConfigError(f"{source} does not exist")
    if source.is_dir():
        if (source / "saved_model.pb").is_file():
            return "savedmodel"
        raise ConfigError(f"{source} is a folder without saved_model.pb: not a SavedModel")
    found = _SUFFIX_FORMATS.get(source.suffix)
    if found is None:
        raise ConfigError(
            f"cannot tell the format of {source}; give --format ({', '.join(FORMATS)})"
        )
    return found


def _import_tensorflow(
    source: Path,
    format: Format,
    repo: Path,
    name: str,
    version: int | None,
    sample: Path | None,
) -> Path:
    from streaminfer.models.imports.tensorflow import convert_in_child

    converted = convert_in_child(source, format, sample)
    verify.verify_tensors(lambda _: converted.expected, converted.model, converted.inputs)
    metadata = ModelMetadata(signature=read_signature(converted.model))
    return write_model_version(repo, name, version, ModelFiles(converted.model), metadata)


def _import_tabular(
    source: Path,
    format: Format,
    trust_pickle: bool,
    repo: Path,
    name: str,
    version: int | None,
    sample: Path | None,
    features: list[Feature] | None,
) -> Path:
    converted = tabular.convert(_read_tabular(source, format, trust_pickle))
    model = converted.model
    _open_batch_dimension(model)
    signature = read_signature(model)
    width = signature.inputs[0].shape[-1]
    features = _features(features, converted.feature_names, width)
    rows = verify.read_rows(sample, features) if sample else verify.generated_rows(width)
    verify.verify_tabular(converted, model, rows)
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


def _read_tabular(source: Path, format: Format, trust_pickle: bool) -> object:
    """Pickles (whatever the format says) need trust; booster files are read without."""
    if source.suffix in tabular.PICKLE_SUFFIXES or format == "sklearn":
        return tabular.load_pickle(source, trust_pickle)
    if format == "xgboost":
        return tabular.read_xgboost(source)
    return tabular.read_lightgbm(source)


def _features(given: list[Feature] | None, known: list[str] | None, width: int) -> list[Feature]:
    """``--features`` wins over the names the framework kept; unnamed columns are f0, f1..."""
    if given is not None:
        if len(given) != width:
            raise ConfigError(f"{len(given)} features given for a model of {width}")
        return given
    return [Feature(name=n) for n in known or [f"f{i}" for i in range(width)]]


def _open_batch_dimension(model: onnx.ModelProto) -> None:
    """Converters sometimes declare a fixed batch of 1 on outputs; every output is [N, ...]."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "N"

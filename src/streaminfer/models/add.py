"""``models add``: an ONNX file someone brings becomes a model version like any other.

The graph's inputs and outputs become the signature in ``model.json`` (a symbolic or
unknown dimension is ``-1``).  Before anything is written the model is loaded once in
ONNX Runtime and run on a batch of zeros, so a version that lands in the repository is
one the server and the worker can run; the version folder then appears atomically.  A
file that is not ONNX, that ONNX Runtime cannot load (an opset it does not know, say),
or whose inputs or outputs are not tensors of a type we can feed is refused with a
one-line ``ConfigError``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import TensorProto
from pydantic import ValidationError

from streaminfer.errors import ConfigError
from streaminfer.images.presets import ImageOptions
from streaminfer.models.control_state import check_name
from streaminfer.models.features import check_features
from streaminfer.models.layout import write_version_atomically
from streaminfer.models.metadata import (
    DType,
    Feature,
    ModelMetadata,
    Signature,
    TensorSpec,
)
from streaminfer.types import Tensors

LABELS_FILE = "labels.txt"

_DTYPES: dict[int, DType] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.DOUBLE: "float64",
    TensorProto.INT8: "int8",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.UINT8: "uint8",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
    TensorProto.BOOL: "bool",
    TensorProto.STRING: "string",
}
# skl2onnx and onnxmltools name a classifier's probability matrix so (without ZipMap).
_PROBABILITY_OUTPUTS = ("probabilities", "output_probability")


@dataclass(frozen=True)
class ModelFiles:
    """What a version folder holds besides ``model.json``: the graph and its class names."""

    model: onnx.ModelProto
    labels: list[str] | None = None


def add_onnx_model(
    source: Path,
    repo: Path,
    name: str,
    version: int | None = None,
    *,
    labels: Path | None = None,
    image: ImageOptions | None = None,
    features: list[Feature] | None = None,
) -> Path:
    """Check ``source`` and write it as a new version of ``repo/name``; return its folder.

    ``image`` makes it an image model (its first input takes the preprocessed image),
    ``features`` a tabular one.
    """
    if image is not None and features is not None:
        raise ConfigError("a model takes images or features, not both")
    model = read_onnx(source)
    signature = read_signature(model)
    if image is not None and not signature.inputs[0].dtype.startswith("float"):
        first = signature.inputs[0]
        raise ConfigError(f"an image model's first input is float, {first.name!r} is {first.dtype}")
    class_names = _read_labels(labels) if labels is not None else None
    metadata = ModelMetadata(
        signature=signature,
        preprocess=image.resolve(signature.inputs[0].shape) if image else None,
        features=features,
        labels_file=LABELS_FILE if class_names is not None else None,
        probabilities_output=_probabilities_output(signature) if features else None,
    )
    return write_model_version(repo, name, version, ModelFiles(model, class_names), metadata)


def read_features(text: str) -> list[Feature]:
    """``--features``: comma-separated names, or a file of names (one a line) or of JSON
    (a list of names or of ``{"name", "dtype", "default"}`` objects)."""
    path = Path(text)
    if not path.is_file():
        return [Feature(name=n.strip()) for n in text.split(",") if n.strip()]
    try:
        content = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read features file {path}: {exc.strerror or exc}") from exc
    if path.suffix != ".json":
        return [Feature(name=line.strip()) for line in content.splitlines() if line.strip()]
    try:
        listed = json.loads(content)
        if not isinstance(listed, list):
            raise ValueError("expected a JSON list")
        return (
            ModelMetadata.model_validate(
                {"signature": {"inputs": [], "outputs": []}, "features": listed}
            ).features
            or []
        )
    except (ValueError, ValidationError) as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"features file {path}: {message}") from exc


def read_onnx(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file (weights in external data files are pulled in)."""
    try:
        model = onnx.load(str(path))
    except DecodeError as exc:
        raise ConfigError(f"{path} is not an ONNX model ({exc})") from exc
    except onnx.checker.ValidationError as exc:  # its external data file is missing
        raise ConfigError(f"cannot read the weights of {path}: {_first_line(exc)}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not model.HasField("graph") or not model.graph.node or model.ir_version == 0:
        raise ConfigError(f"{path} is not an ONNX model (no graph)")
    return model


def read_signature(model: onnx.ModelProto) -> Signature:
    """The graph's real inputs (initializers excluded) and outputs as tensor specs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(i, "input") for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise ConfigError("the model takes no inputs")
    for spec in inputs:
        if spec.shape is None:
            raise ConfigError(f"input {spec.name!r} has no declared shape (rank unknown)")
    return Signature(
        inputs=[TensorSpec(name=s.name, dtype=s.dtype, shape=s.shape or []) for s in inputs],
        outputs=[
            TensorSpec(name=s.name, dtype=s.dtype, shape=s.shape or [])
            for s in (_spec(o, "output") for o in model.graph.output)
        ],
    )


def write_model_version(
    repo: Path, name: str, version: int | None, files: ModelFiles, metadata: ModelMetadata
) -> Path:
    """Run the model once on zeros, then write the version atomically; return its folder."""
    check_name(name, "model")
    if metadata.features is not None:
        check_features(metadata.features, metadata.signature)
    if files.labels is not None:
        _check_class_count(files.labels, metadata)
    try:
        serialized = files.model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise ConfigError(f"the model cannot be saved as one file: {exc}") from exc
    session = load_session(serialized)
    try:
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4
        outputs = session.run(None, dummy_inputs(metadata), quiet)
    except Exception as exc:  # as for loading: ORT's own exception types
        raise ConfigError(f"the model fails on a batch of zeros: {_ort_reason(exc)}") from exc
    metadata = _fill_output_ranks(metadata, session, outputs)

    def fill(folder: Path) -> None:
        (folder / metadata.model_file).write_bytes(serialized)
        if files.labels is not None and metadata.labels_file is not None:
            (folder / metadata.labels_file).write_text("\n".join(files.labels) + "\n")
        metadata.write(folder)

    return write_version_atomically(repo / name, version, fill)


def load_session(serialized: bytes) -> ort.InferenceSession:
    """One ONNX Runtime session on one thread; a load failure becomes a one-line reason."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # failures are reported once, by the caller
    try:
        return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for every load failure
        raise ConfigError(
            f"ONNX Runtime {ort.__version__} cannot load it: {_ort_reason(exc)}"
        ) from exc


def dummy_inputs(metadata: ModelMetadata) -> Tensors:
    """A batch of one row of zeros ("" for strings), image inputs at the preprocessed size."""
    inputs: Tensors = {}
    for index, spec in enumerate(metadata.signature.inputs):
        shape = [1 if d < 0 else d for d in spec.shape]
        if index == 0 and metadata.preprocess is not None:
            height, width = metadata.preprocess.size
            shape = (
                [1, 3, height, width]
                if metadata.preprocess.layout == "NCHW"
                else [1, height, width, 3]
            )
        if spec.dtype == "string":
            inputs[spec.name] = np.full(shape, "", dtype=object)
        else:
            inputs[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return inputs


@dataclass(frozen=True)
class _Spec:
    name: str
    dtype: DType
    shape: list[int] | None  # None: rank unknown


def _spec(value: onnx.ValueInfoProto, role: str) -> _Spec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        hint = (
            " (convert classifiers without ZipMap)" if kind in ("sequence_type", "map_type") else ""
        )
        raise ConfigError(f"{role} {value.name!r} is a {_kind_name(kind)}, not a tensor{hint}")
    tensor = value.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type)
    if dtype is None:
        type_name = TensorProto.DataType.Name(tensor.elem_type)
        raise ConfigError(
            f"{role} {value.name!r} has element type {type_name}, which is not supported"
        )
    if not tensor.HasField("shape"):
        return _Spec(value.name, dtype, None)
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return _Spec(value.name, dtype, shape)


def _kind_name(kind: str | None) -> str:
    return (kind or "value of no type").removesuffix("_type").replace("_", " ")


def _fill_output_ranks(
    metadata: ModelMetadata, session: ort.InferenceSession, outputs: list[np.ndarray]
) -> ModelMetadata:
    """An output whose rank the graph leaves open gets the rank it had on the dummy run."""
    ranks = {
        o.name: np.asarray(v).ndim for o, v in zip(session.get_outputs(), outputs, strict=True)
    }
    specs = [
        spec if spec.shape else spec.model_copy(update={"shape": [-1] * ranks[spec.name]})
        for spec in metadata.signature.outputs
    ]
    signature = metadata.signature.model_copy(update={"outputs": specs})
    return metadata.model_copy(update={"signature": signature})


def _probabilities_output(signature: Signature) -> str | None:
    for spec in signature.outputs:
        if spec.name in _PROBABILITY_OUTPUTS and spec.dtype.startswith("float"):
            return spec.name
    return None


def _check_class_count(labels: list[str], metadata: ModelMetadata) -> None:
    """The class names must match the width of the output they name."""
    name = metadata.probabilities_output or metadata.signature.outputs[0].name
    spec = next(s for s in metadata.signature.outputs if s.name == name)
    width = spec.shape[-1] if spec.shape else -1
    if width > 0 and width != len(labels):
        raise ConfigError(f"{len(labels)} labels for output {name!r} of {width} classes")


def _read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc.strerror or exc}") from exc
    if not lines:
        raise ConfigError(f"labels file {path} is empty")
    return lines


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _ort_reason(exc: Exception) -> str:
    """ORT's message on one line, without its error-code prefix and C++ source locations."""
    text = " ".join(str(exc).split())
    opset = re.search(r"Opset (\d+) .* domain (\S+) is till opset (\d+)", text)
    if opset:
        number, domain, newest = opset.groups()
        return f"it uses opset {number} of {domain}; this ONNX Runtime runs opsets up to {newest}"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    # "/onnxruntime_src/.../file.h:46 void ns::Function(args...) the actual message"
    return re.sub(r"/onnxruntime_src/\S+:\d+ .*?\) ", "", text)

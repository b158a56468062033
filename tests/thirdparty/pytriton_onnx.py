"""Serve ONNX models with NVIDIA's Triton Inference Server via PyTriton (run by ``.venv-triton``).

PyTriton starts the ``tritonserver`` binary it bundles and answers each model from a
Python function: here onnxruntime on CPU.  Two kinds of model, as people deploy them:

* ``--onnx NAME=MODEL.onnx``: the model as exported, its inputs and outputs read from
  the ONNX graph (the first dimension is Triton's batch dimension);
* ``--images NAME=VERSION_DIR``: an image classifier taking encoded images (``images``
  BYTES) and answering ``classes`` / ``scores`` for the top 5, decoding with Pillow as the
  ``model.json`` in ``VERSION_DIR`` says.  A file Pillow cannot decode fails the request
  (Triton answers INTERNAL), as Triton's Python backends do.

Usage: python pytriton_onnx.py --http-port P --grpc-port P [--onnx N=F ...] [--images N=D ...]
Does not import streaminfer: this venv has Triton's pins, not ours.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MAX_BATCH = 64
TOP_K = 5
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

Infer = Callable[..., dict[str, np.ndarray]]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _tensors(args: list) -> list[Tensor]:
    """Triton tensors of ONNX inputs or outputs, without the batch dimension."""
    return [
        Tensor(
            name=a.name,
            dtype=_ORT_DTYPES[a.type],
            shape=tuple(d if isinstance(d, int) else -1 for d in a.shape[1:]),
        )
        for a in args
    ]


def tensor_model(path: Path) -> tuple[Infer, list[Tensor], list[Tensor]]:
    session = _session(path)
    names = [o.name for o in session.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, inputs), strict=True))

    return infer, _tensors(session.get_inputs()), _tensors(session.get_outputs())


def image_model(version_dir: Path) -> tuple[Infer, list[Tensor], list[Tensor]]:
    meta = json.loads((version_dir / "model.json").read_text())
    spec = meta["preprocess"]
    session = _session(version_dir / meta.get("model_file", "model.onnx"))
    input_name = session.get_inputs()[0].name
    labels = (version_dir / meta["labels_file"]).read_text().splitlines()
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    height, width = spec["size"]

    def pixels(data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data))
        image.load()  # a truncated file fails here
        image = image.convert("RGB")
        scale = max(height / image.height, width / image.width)
        box_w, box_h = width / scale, height / scale
        left, top = (image.width - box_w) / 2, (image.height - box_h) / 2
        image = image.resize(
            (width, height), Image.Resampling.BILINEAR, box=(left, top, left + box_w, top + box_h)
        )
        row = (np.asarray(image, np.float32) / 255.0 - mean) / std
        return row.transpose(2, 0, 1) if spec.get("layout", "NCHW") == "NCHW" else row

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.stack([pixels(bytes(item)) for item in images.reshape(-1)])
        logits = session.run(None, {input_name: rows})[0]
        best = np.argsort(-logits, axis=1)[:, :TOP_K]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        classes = np.array([[labels[c].encode() for c in row] for row in best], dtype=object)
        scores = np.take_along_axis(probabilities, best, axis=1).astype(np.float32)
        return {"classes": classes, "scores": scores}

    inputs = [Tensor(name="images", dtype=np.bytes_, shape=(1,))]
    outputs = [
        Tensor(name="classes", dtype=np.bytes_, shape=(TOP_K,)),
        Tensor(name="scores", dtype=np.float32, shape=(TOP_K,)),
    ]
    return infer, inputs, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--onnx", action="append", default=[], metavar="NAME=MODEL.onnx")
    parser.add_argument("--images", action="append", default=[], metavar="NAME=VERSION_DIR")
    args = parser.parse_args()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_metrics=False,
        exit_on_error=True,
    )
    models = [(spec, tensor_model) for spec in args.onnx]
    models += [(spec, image_model) for spec in args.images]
    with Triton(config=config) as triton:
        for spec, build in models:
            name, path = spec.split("=", 1)
            infer, inputs, outputs = build(Path(path))
            triton.bind(
                model_name=name,
                infer_func=infer,
                inputs=inputs,
                outputs=outputs,
                config=ModelConfig(max_batch_size=MAX_BATCH),
            )
        triton.serve()


if __name__ == "__main__":
    main()

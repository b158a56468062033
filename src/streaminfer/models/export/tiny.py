"""A tiny tensor-in/tensor-out model: the workload where per-record overhead dominates.

``y = x @ W + b`` with fixed weights, input ``x`` float32 ``[N, 4]`` and output ``y``
float32 ``[N, 4]``.  Its answer is easy to check exactly, so tests use it to prove that
every record's output is its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streaminfer.models.layout import write_version_atomically
from streaminfer.models.metadata import ModelMetadata, Signature, TensorSpec

WIDTH = 4
WEIGHTS = np.arange(WIDTH * WIDTH, dtype=np.float32).reshape(WIDTH, WIDTH) / 10
BIAS = np.ones(WIDTH, dtype=np.float32)


def tiny_reference(x: np.ndarray) -> np.ndarray:
    """What the tiny model computes, in numpy."""
    result: np.ndarray = x.astype(np.float32) @ WEIGHTS + BIAS
    return result


def build_tiny_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def export_tiny_model(repo: Path, version: int | None = None, model_name: str = "tiny") -> Path:
    """Write the tiny model as a new version of ``<repo>/<model_name>``."""
    metadata = ModelMetadata(
        signature=Signature(
            inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, WIDTH])],
            outputs=[TensorSpec(name="y", dtype="float32", shape=[-1, WIDTH])],
        ),
        top_k=1,
    )

    def fill(target: Path) -> None:
        onnx.save(build_tiny_model(), str(target / metadata.model_file))
        metadata.write(target)

    return write_version_atomically(repo / model_name, version, fill)

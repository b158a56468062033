"""A model whose output is not a row per input row: the column sums of its batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streaminfer.models.metadata import ModelMetadata, Signature, TensorSpec
from streaminfer.predictors.base import Outcome, PredictRequest, PredictResult


def export_column_sums(repo: Path) -> None:
    """A model answering a batch [N, 4] with one row [4]: the sums of its columns."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        "sums",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[numpy_helper.from_array(np.array([0], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata(
        signature=Signature(
            inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 4])],
            outputs=[TensorSpec(name="y", dtype="float32", shape=[4])],
        )
    )
    version = repo / "sums" / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / metadata.model_file))
    metadata.write(version)


def assert_own_sums(outcomes: list[Outcome], batch: list[PredictRequest]) -> None:
    """Each record answered with the sums of its own rows."""
    for outcome, request in zip(outcomes, batch, strict=True):
        assert isinstance(outcome, PredictResult) and outcome.outputs is not None
        assert request.tensors is not None
        np.testing.assert_allclose(outcome.outputs["y"], request.tensors["x"].sum(axis=0))

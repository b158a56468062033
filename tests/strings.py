"""A model of string tensors: what goes in comes out, so a test sees the exact text the
model was given."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from streaminfer.models.metadata import ModelMetadata, Signature, TensorSpec

STRINGS = "strings"
TEXTS = ["abc", "", "été ☃", "nul\x00inside", "b'quoted'"]
"""Text the model must see exactly: accents, a snowman, a NUL, what ``str(b"")`` looks like."""


def export_string_identity(repo: Path) -> None:
    """``strings`` version 1: an Identity of a string tensor ``s`` [N] to ``out`` [N]."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["out"])],
        STRINGS,
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("out", TensorProto.STRING, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata(
        signature=Signature(
            inputs=[TensorSpec(name="s", dtype="string", shape=[-1])],
            outputs=[TensorSpec(name="out", dtype="string", shape=[-1])],
        )
    )
    version = repo / STRINGS / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / metadata.model_file))
    metadata.write(version)

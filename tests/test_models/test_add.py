"""``models add``: ONNX files built here (several input types, dynamic dims) become versions
the registry serves; broken ones are refused with one line and leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streaminfer.errors import ConfigError
from streaminfer.images.presets import ImageOptions
from streaminfer.models.add import add_onnx_model, read_features
from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.metadata import Feature, ModelMetadata
from streaminfer.models.registry import ModelRegistry
from tests.support import run_cli


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    opset: int = 17,
    initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mixed_types_model() -> onnx.ModelProto:
    """Four inputs of four element types; the float one has a symbolic and an unknown dim."""
    unknown_dim = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None])
    return make_model(
        [
            helper.make_node("Relu", ["x"], ["relu"]),
            helper.make_node("Cast", ["ids"], ["ids_float"], to=TensorProto.FLOAT),
            helper.make_node("Not", ["flag"], ["not_flag"]),
            helper.make_node("Identity", ["text"], ["same_text"]),
        ],
        [
            unknown_dim,
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch", 2]),
            helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info("ids_float", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("not_flag", TensorProto.BOOL, ["batch", 2]),
            # No shape at all: the rank comes from the dummy run.
            helper.make_tensor_value_info("same_text", TensorProto.STRING, None),
        ],
    )


def linear_model(width: int, outputs: int, name: str = "x") -> onnx.ModelProto:
    weights = np.arange(width * outputs, dtype=np.float32).reshape(width, outputs) / 10
    return make_model(
        [helper.make_node("MatMul", [name, "W"], ["probabilities"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", outputs])],
        initializers=[numpy_helper.from_array(weights, "W")],
    )


def image_model(shape: list[int | str]) -> onnx.ModelProto:
    """Global average pool to [N, 3]: an 'image classifier' with 3 classes."""
    nchw = shape[1] == 3
    return make_model(
        [helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2, 3] if nchw else [1, 2])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        opset=17,
    )


def versions(repo: Path, name: str) -> list[str]:
    folder = repo / name
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_signature_records_types_and_dynamic_dims(tmp_path: Path) -> None:
    source = save(mixed_types_model(), tmp_path / "mixed.onnx")
    folder = add_onnx_model(source, tmp_path / "repo", "mixed")

    assert folder == tmp_path / "repo" / "mixed" / "1"
    document = json.loads((folder / "model.json").read_text())
    inputs = {i["name"]: (i["dtype"], i["shape"]) for i in document["signature"]["inputs"]}
    assert inputs == {
        "x": ("float32", [-1, -1]),
        "ids": ("int64", [-1]),
        "flag": ("bool", [-1, 2]),
        "text": ("string", [-1]),
    }
    outputs = {o["name"]: (o["dtype"], o["shape"]) for o in document["signature"]["outputs"]}
    assert outputs["same_text"] == ("string", [-1])
    assert outputs["not_flag"] == ("bool", [-1, 2])
    assert (folder / "model.onnx").read_bytes() == source.read_bytes()


def test_added_model_is_served_by_the_registry(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_onnx_model(save(mixed_types_model(), tmp_path / "m.onnx"), repo, "mixed")
    registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
    registry.reload()
    try:
        served = registry.resolve("mixed", None, None)
        out = served.infer(
            {
                "x": np.array([[-1.0, 2.0, -3.0]], dtype=np.float32),
                "ids": np.array([7], dtype=np.int64),
                "flag": np.array([[True, False]]),
                "text": np.array(["hello"], dtype=object),
            }
        )
    finally:
        registry.close()
    np.testing.assert_array_equal(out["relu"], [[0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(out["ids_float"], [7.0])
    np.testing.assert_array_equal(out["not_flag"], [[False, True]])
    assert list(out["same_text"]) == ["hello"]


def test_versions_are_numbered_and_immutable(tmp_path: Path) -> None:
    source = save(linear_model(4, 2), tmp_path / "lin.onnx")
    repo = tmp_path / "repo"
    assert add_onnx_model(source, repo, "lin").name == "1"
    assert add_onnx_model(source, repo, "lin").name == "2"
    assert add_onnx_model(source, repo, "lin", 7).name == "7"
    with pytest.raises(ConfigError, match="already exists"):
        add_onnx_model(source, repo, "lin", 7)
    assert versions(repo, "lin") == ["1", "2", "7"]


def test_labels_are_copied_and_counted(tmp_path: Path) -> None:
    source = save(linear_model(4, 3), tmp_path / "lin.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    folder = add_onnx_model(source, tmp_path / "repo", "lin", labels=labels)
    metadata = ModelMetadata.read(folder)
    assert metadata.labels(folder) == ["cat", "dog", "bird"]

    labels.write_text("cat\ndog\n")
    with pytest.raises(ConfigError, match="2 labels for output 'probabilities' of 3 classes"):
        add_onnx_model(source, tmp_path / "repo", "other", labels=labels)
    assert versions(tmp_path / "repo", "other") == []


def test_features_make_a_tabular_classifier(tmp_path: Path) -> None:
    source = save(linear_model(3, 2), tmp_path / "lin.onnx")
    features = [Feature(name="a"), Feature(name="b"), Feature(name="c", default=0.0)]
    folder = add_onnx_model(source, tmp_path / "repo", "tab", features=features)
    metadata = ModelMetadata.read(folder)
    assert metadata.features == features
    assert metadata.probabilities_output == "probabilities"

    with pytest.raises(ConfigError, match="2 features fit neither"):
        add_onnx_model(source, tmp_path / "repo", "bad", features=features[:2])


def test_read_features_from_names_lines_and_json(tmp_path: Path) -> None:
    assert [f.name for f in read_features("a, b,c")] == ["a", "b", "c"]
    lines = tmp_path / "features.txt"
    lines.write_text("dep_delay\ndistance\n\n")
    assert [f.name for f in read_features(str(lines))] == ["dep_delay", "distance"]
    described = tmp_path / "features.json"
    described.write_text(json.dumps(["a", {"name": "hour", "dtype": "int64", "default": 12}]))
    assert read_features(str(described)) == [
        Feature(name="a"),
        Feature(name="hour", dtype="int64", default=12),
    ]
    described.write_text(json.dumps([{"name": "a", "dtype": "complex"}]))
    with pytest.raises(ConfigError, match="features file"):
        read_features(str(described))


@pytest.mark.parametrize(
    ("shape", "options", "size", "layout"),
    [
        (["N", 3, 32, 48], ImageOptions("imagenet"), (32, 48), "NCHW"),
        (["N", 40, 24, 3], ImageOptions("inception"), (40, 24), "NHWC"),
        (["N", "H", "W", 3], ImageOptions("raw", size=(20, 20)), (20, 20), "NHWC"),
    ],
)
def test_preprocess_presets_take_size_and_layout_from_the_shape(
    tmp_path: Path,
    shape: list[int | str],
    options: ImageOptions,
    size: tuple[int, int],
    layout: str,
) -> None:
    source = save(image_model(shape), tmp_path / "img.onnx")
    folder = add_onnx_model(source, tmp_path / "repo", "img", image=options)
    preprocess = ModelMetadata.read(folder).preprocess
    assert preprocess is not None
    assert (preprocess.size, preprocess.layout) == (size, layout)


def test_open_image_size_without_input_size_is_refused(tmp_path: Path) -> None:
    source = save(image_model(["N", 3, "H", "W"]), tmp_path / "img.onnx")
    with pytest.raises(ConfigError, match="give --input-size"):
        add_onnx_model(source, tmp_path / "repo", "img", image=ImageOptions("imagenet"))


def opset_too_new() -> onnx.ModelProto:
    return make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        opset=99,
    )


def complex_input() -> onnx.ModelProto:
    return make_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.COMPLEX64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.COMPLEX64, ["N"])],
    )


def sequence_output() -> onnx.ModelProto:
    """What a classifier converted with ZipMap looks like to us: a non-tensor output."""
    return make_model(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, ["N", 3])],
    )


def fails_on_a_batch() -> onnx.ModelProto:
    """Loads, but its Reshape needs 2 rows: the dummy batch of one exposes it."""
    shape = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "shape")
    return make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializers=[shape],
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"name,delay\nAA,12\n", "is not an ONNX model"),
        (b"", "is not an ONNX model"),
        (linear_model(4, 2).SerializeToString()[:40], "is not an ONNX model"),
        (opset_too_new().SerializeToString(), "uses opset 99 of ai.onnx"),
        (complex_input().SerializeToString(), "element type COMPLEX64, which is not supported"),
        (sequence_output().SerializeToString(), "is a sequence, not a tensor"),
        (fails_on_a_batch().SerializeToString(), "fails on a batch of zeros"),
    ],
    ids=["csv", "empty", "truncated", "opset", "complex", "sequence", "run"],
)
def test_broken_files_are_refused_and_leave_nothing(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    source = tmp_path / "broken.onnx"
    source.write_bytes(content)
    repo = tmp_path / "repo"
    with pytest.raises(ConfigError, match=reason) as caught:
        add_onnx_model(source, repo, "broken")
    assert "\n" not in str(caught.value)
    assert versions(repo, "broken") == []


def test_cli_adds_a_model_and_refuses_a_broken_one(tmp_path: Path) -> None:
    source = save(linear_model(3, 2), tmp_path / "lin.onnx")
    repo = tmp_path / "repo"
    added = run_cli(
        "models", "add", str(source), "--repo", str(repo), "--name", "lin",
        "--features", "a,b,c", "--version", "3",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert ModelMetadata.read(repo / "lin" / "3").features == [
        Feature(name="a"),
        Feature(name="b"),
        Feature(name="c"),
    ]

    broken = tmp_path / "notes.onnx"
    broken.write_text("not a model")
    refused = run_cli("models", "add", str(broken), "--repo", str(repo), "--name", "notes")
    assert refused.returncode == 2
    assert refused.stderr.startswith("streaminfer: error: ")
    assert "is not an ONNX model" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert versions(repo, "notes") == []


def test_external_weights_are_folded_into_one_file(tmp_path: Path) -> None:
    model = linear_model(64, 64)  # 16 KiB of weights: above the external-data threshold
    expected = numpy_helper.to_array(model.graph.initializer[0])
    source = tmp_path / "src" / "big.onnx"
    source.parent.mkdir()
    onnx.save(model, str(source), save_as_external_data=True, location="big.weights")
    assert (tmp_path / "src" / "big.weights").is_file()

    folder = add_onnx_model(source, tmp_path / "repo", "big")

    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx"]
    saved = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    weights = next(t for t in saved.graph.initializer if t.name == "W")
    np.testing.assert_array_equal(numpy_helper.to_array(weights), expected)


def test_missing_external_weights_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "big.onnx"
    onnx.save(linear_model(64, 64), str(source), save_as_external_data=True, location="w.bin")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ConfigError, match="cannot read the weights of"):
        add_onnx_model(source, tmp_path / "repo", "big")


def test_bad_names_and_mismatched_kinds_are_refused(tmp_path: Path) -> None:
    source = save(linear_model(4, 2), tmp_path / "lin.onnx")
    with pytest.raises(ConfigError, match=r"invalid model name '\.\./up'"):
        add_onnx_model(source, tmp_path / "repo", "../up")
    integers = make_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", 8, 8, 3])],
    )
    with pytest.raises(ConfigError, match="first input is float, 'x' is uint8"):
        add_onnx_model(save(integers, tmp_path / "u8.onnx"), tmp_path / "repo", "u8",
                       image=ImageOptions("raw"))  # fmt: skip
    with pytest.raises(ConfigError, match="images or features, not both"):
        add_onnx_model(source, tmp_path / "repo", "lin", image=ImageOptions("raw"),
                       features=[Feature(name="a")])  # fmt: skip
    assert not (tmp_path / "repo").exists()

"""The data plane in-process, over a real repository of the tiny model: find, run, describe.

Every door (TF Serving and KServe V2, REST and gRPC) calls only this, so what is proven
here holds for all of them; the end-to-end tests beside it prove the translation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streaminfer.codecs.arrays import BYTES, bytes_array
from streaminfer.codecs.tfserving_json import UNNAMED
from streaminfer.errors import RecordError
from streaminfer.flights import FEATURES
from streaminfer.models.errors import BadLabel, ModelNotFound
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.models.imports import import_model
from streaminfer.models.model_config import ModelConfig, VersionPolicy
from streaminfer.models.registry import LoadedVersion, ModelRegistry
from streaminfer.models.status import VersionState
from streaminfer.serving.dataplane import (
    DEFAULT_SIGNATURE,
    FALLBACK_IMAGE_MODEL,
    IMAGE_ENTRY_SUFFIX,
    IMAGE_SIGNATURES,
    DataPlane,
)
from streaminfer.serving.errors import DeadlineExceeded, InvalidRequest, Unavailable
from tests.flights import HELD_OUT, FlightsModel

IMAGE_MODEL = "efficientnet-lite0"
X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1 and 2 of the tiny model."""
    repo = tmp_path_factory.mktemp("repo")
    export_tiny_model(repo, 1)
    export_tiny_model(repo, 2)
    return repo


def _plane(repo: Path, **options: float) -> Iterator[DataPlane]:
    registry = ModelRegistry(
        repo,
        [ModelConfig(name="tiny", version_policy=VersionPolicy(kind="all"), labels={"stable": 1})],
    )
    registry.reload()
    plane = DataPlane(registry, **options)  # type: ignore[arg-type]
    yield plane
    plane.close()
    registry.close()


@pytest.fixture
def plane(tiny_repo: Path) -> Iterator[DataPlane]:
    yield from _plane(tiny_repo)


def test_a_model_is_found_by_name_version_or_label(plane: DataPlane) -> None:
    assert (plane.model("tiny").name, plane.model("tiny").version) == ("tiny", 2)
    assert plane.model("tiny", 1).version == 1
    assert plane.model("tiny", label="stable").version == 1
    assert plane.versions("tiny") == [1, 2]
    with pytest.raises(ModelNotFound, match="not served"):
        plane.model("nope")
    with pytest.raises(ModelNotFound, match="versions: 1, 2"):
        plane.model("tiny", 3)
    with pytest.raises(BadLabel, match="label 'canary'"):
        plane.model("tiny", label="canary")


def test_a_handle_runs_the_version_it_found(plane: DataPlane) -> None:
    model = plane.model("tiny", 1)
    outputs = asyncio.run(model.infer({"x": X}))
    assert list(outputs) == ["y"]
    np.testing.assert_allclose(outputs["y"], tiny_reference(X), rtol=1e-6)
    unnamed = asyncio.run(model.infer({UNNAMED: X}, DEFAULT_SIGNATURE, ["y"]))
    np.testing.assert_allclose(unnamed["y"], outputs["y"])


@pytest.mark.parametrize(
    ("inputs", "options", "words"),
    [
        ({"x": X}, {"signature": "nope"}, "no signature 'nope'"),
        *(
            ({"x": X}, {"signature": name}, f"no signature {name!r}")  # a tensor model's
            for name in IMAGE_SIGNATURES
        ),
        ({"x": X}, {"output_filter": ["z"]}, "unknown outputs ['z']"),
        ({"x": X, "top_k": np.array([1, 2])}, {}, "'top_k' must be a single integer"),
        ({"x": X}, {"top_k": 0}, "top_k must be at least 1"),
        ({"x": X[0]}, {}, "expected [N, 4]"),
        ({"x": X, "w": X[:1]}, {}, "disagree on the batch size"),
        ({"x": X[:0]}, {}, "at least one row"),
        ({UNNAMED: X, "w": X}, {}, "name each one"),
    ],
)
def test_bad_requests_say_what_to_fix(
    plane: DataPlane, inputs: dict[str, np.ndarray], options: dict[str, object], words: str
) -> None:
    with pytest.raises(RecordError) as refused:  # InvalidRequest, or the model's InvalidInput
        asyncio.run(plane.model("tiny").infer(inputs, **options))  # type: ignore[arg-type]
    assert words in str(refused.value)


def test_status_lists_every_version_or_the_one_named(plane: DataPlane) -> None:
    assert [(s.version, s.state) for s in plane.status("tiny")] == [
        (1, VersionState.AVAILABLE),
        (2, VersionState.AVAILABLE),
    ]
    assert [s.version for s in plane.status("tiny", 2)] == [2]
    assert [s.version for s in plane.status("tiny", label="stable")] == [1]
    with pytest.raises(ModelNotFound, match="versions: 1, 2"):
        plane.status("tiny", 7)
    with pytest.raises(ModelNotFound, match="not known"):
        plane.status("nope")


def test_a_tensor_model_has_one_signature_and_no_default_image_model(plane: DataPlane) -> None:
    signatures = plane.model("tiny").signatures()
    assert list(signatures) == [DEFAULT_SIGNATURE]
    assert [s.name for s in signatures[DEFAULT_SIGNATURE].inputs] == ["x"]
    assert plane.default_image_model() == FALLBACK_IMAGE_MODEL


def test_a_stopping_plane_takes_no_new_work_and_serves_what_arrived(plane: DataPlane) -> None:
    arrived = plane.model("tiny")  # a request whose body is still being read
    assert plane.ready and arrived.ready
    plane.stop_accepting()
    assert not plane.ready and not arrived.ready
    np.testing.assert_allclose(
        asyncio.run(arrived.infer({"x": X}))["y"], tiny_reference(X), rtol=1e-6
    )
    late = plane.model("tiny")
    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(late.infer({"x": X}))
    with pytest.raises(Unavailable):
        asyncio.run(late.classify([b"jpeg"]))


def test_a_request_past_the_deadline_is_cut_off(tiny_repo: Path) -> None:
    for plane in _plane(tiny_repo, request_timeout=1e-9):
        with pytest.raises(DeadlineExceeded, match="deadline"):
            asyncio.run(plane.model("tiny").infer({"x": X}))


def test_set_configs_serves_exactly_the_configured_versions(plane: DataPlane) -> None:
    only_one = VersionPolicy(kind="specific", versions=[1])
    asyncio.run(plane.set_configs([ModelConfig(name="tiny", version_policy=only_one)]))
    assert plane.versions("tiny") == [1]
    assert plane.model("tiny").version == 1


@pytest.fixture(scope="module")
def image_plane(model_repo: Path) -> Iterator[DataPlane]:
    yield from _plane(model_repo)


def test_an_image_model_classifies_encoded_images(
    image_plane: DataPlane, sample_jpegs: dict[str, bytes]
) -> None:
    model = image_plane.model(IMAGE_MODEL)
    assert image_plane.default_image_model() == IMAGE_MODEL
    assert set(IMAGE_SIGNATURES) < set(model.signatures())
    jpegs = [sample_jpegs["chelsea"], sample_jpegs["coffee"]]
    ranked = asyncio.run(model.classify(jpegs, top_k=3))
    assert ranked["classes"].shape == ranked["scores"].shape == ranked["class_ids"].shape == (2, 3)
    assert ranked["classes"].dtype == BYTES and ranked["class_ids"][1, 0] == 967  # espresso
    for name in ("images", "image_bytes", UNNAMED):
        same = asyncio.run(model.infer({name: bytes_array(jpegs), "top_k": np.array(3)}))
        np.testing.assert_array_equal(same["class_ids"], ranked["class_ids"])
    with pytest.raises(InvalidRequest, match="encoded images must have shape"):
        asyncio.run(model.infer({"images": bytes_array(jpegs).reshape(1, 2)}))
    with pytest.raises(InvalidRequest, match="takes encoded images"):
        pixels = np.zeros((1, 3, 224, 224), np.float32)
        asyncio.run(model.infer({"input": pixels}, "serving_images"))


def test_the_image_entry_point_is_its_own_model(
    image_plane: DataPlane, sample_jpegs: dict[str, bytes]
) -> None:
    tensors = image_plane.model(IMAGE_MODEL).signatures()[DEFAULT_SIGNATURE]
    assert [(s.name, s.dtype) for s in tensors.inputs] == [("input", "float32")]
    entry = image_plane.model(IMAGE_MODEL + IMAGE_ENTRY_SUFFIX, 1)
    assert (entry.name, entry.version) == (IMAGE_MODEL + ".images", 1)
    images = entry.signatures()[DEFAULT_SIGNATURE]
    assert [(s.name, s.dtype) for s in images.inputs] == [("images", "string")]
    assert [s.name for s in images.outputs] == ["classes", "scores", "class_ids"]
    assert image_plane.versions(entry.name) == [1]
    assert [s.version for s in image_plane.status(entry.name)] == [1]
    ranked = asyncio.run(entry.infer({"images": bytes_array([sample_jpegs["coffee"]])}))
    assert ranked["class_ids"][0, 0] == 967  # espresso
    with pytest.raises(InvalidRequest, match=r"'efficientnet-lite0\.images' takes encoded images"):
        asyncio.run(entry.infer({"input": np.zeros((1, 3, 224, 224), np.float32)}))


def test_a_tensor_model_has_no_image_entry_point(plane: DataPlane) -> None:
    with pytest.raises(ModelNotFound, match="'tiny' takes no images"):
        plane.model("tiny" + IMAGE_ENTRY_SUFFIX)


def test_classification_replaces_the_outputs_asked_for(
    image_plane: DataPlane, embedded: LoadedVersion
) -> None:
    pixels = np.random.default_rng(5).standard_normal((2, 3, 224, 224), dtype=np.float32)
    model = image_plane.model(IMAGE_MODEL)
    asked = model.infer({"input": pixels}, output_filter=["logits"], classification={"logits": 3})
    outputs = asyncio.run(asked)
    assert outputs["logits"].shape == (2, 3) and outputs["logits"].dtype == BYTES
    best = embedded.infer({"input": pixels})["logits"].argmax(axis=1)
    for row, class_id in zip(outputs["logits"], best, strict=True):
        _, index, label = row[0].decode().split(":", 2)
        assert int(index) == class_id
        assert label == embedded.class_names[class_id]  # type: ignore[index]


def test_records_past_the_batch_limit_are_refused_before_a_row_is_read(
    flights_model: FlightsModel, tmp_path: Path
) -> None:
    """Records were held to no limit: 150,000 of them took the server 300 MB past it."""
    import_model(flights_model.joblib, tmp_path, "delays", trust_pickle=True)
    (version,) = (tmp_path / "delays").iterdir()
    metadata = json.loads((version / "model.json").read_text())
    (version / "model.json").write_text(json.dumps({**metadata, "max_batch_size": 3}))
    registry = ModelRegistry(tmp_path)
    registry.reload()
    plane = DataPlane(registry)
    try:
        model = plane.model("delays")
        good = HELD_OUT[FEATURES].head(3).to_dict("records")
        assert len(asyncio.run(model.predict_records(good))) == 3
        # Records that are not even records: refused for their count, none of them read.
        with pytest.raises(InvalidRequest, match=r"at most 3 rows per request .*, not 4"):
            asyncio.run(model.predict_records([{}] * 4))
    finally:
        plane.close()
        registry.close()

"""Tensors made to fit what a server declares, and metadata read into one shape."""

from __future__ import annotations

import numpy as np
import pytest

from streaminfer.codecs.arrays import BYTES, bytes_array
from streaminfer.models.errors import InvalidInput
from streaminfer.predictors.signature import (
    MetadataCache,
    ServedModel,
    ServedTensor,
    conform,
    tf_model,
    v2_model,
)
from streaminfer.types import ModelRef
from tests.test_predictors.cases import FakeClock

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


def _model(dtype: np.dtype, shape: tuple[int, ...] | None = (-1, 4)) -> ServedModel:
    tensor = ServedTensor("x", dtype, shape)
    return ServedModel(inputs=(tensor,), outputs=(tensor,))


def test_json_numbers_become_the_declared_float32() -> None:
    fitted = conform({"x": np.array([[1, 0, 0, 0]])}, _model(F32))["x"]
    assert fitted.dtype == np.float32
    np.testing.assert_array_equal(fitted, [[1, 0, 0, 0]])
    assert conform({"x": np.array([[0.5, 1e38, 0, 0]])}, _model(F32))["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("values", "dtype", "complaint"),
    [
        (np.array([["a", "b", "c", "d"]]), F32, "<U1 values"),
        (np.array([[1e39, 0, 0, 0]]), F32, "beyond float32's range"),
        (np.array([[0.5, 0, 0, 0]]), I64, "fractions"),
        (np.array([[2**40, 0, 0, 0]]), np.dtype(np.int32), "beyond int32's range"),
        (np.array([[-1, 0, 0, 0]]), np.dtype(np.uint8), "beyond uint8's range"),
        (np.array([[2, 0, 0, 0]]), np.dtype(np.bool_), "other than 0 and 1"),
        (np.array([[1, 0, 0, 0]]), BYTES, "the model takes object"),
    ],
)
def test_a_value_that_would_change_is_refused(
    values: np.ndarray, dtype: np.dtype, complaint: str
) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        conform({"x": values}, _model(dtype))


def test_shapes_names_and_unlisted_inputs() -> None:
    with pytest.raises(InvalidInput, match=r"shape \[1, 3\], the model takes \[-1, 4\]"):
        conform({"x": np.zeros((1, 3))}, _model(F32))
    with pytest.raises(InvalidInput, match=r"unknown inputs \['y'\]"):
        conform({"y": np.zeros((1, 4))}, _model(F32))
    assert conform({"x": np.zeros((2, 7, 1))}, _model(F32, None))["x"].shape == (2, 7, 1)
    unlisted = ServedModel(inputs=(), outputs=())  # MLServer without declared inputs
    given = {"y": np.zeros(3, np.int64)}
    assert conform(given, unlisted) is given


def test_v2_metadata_finds_the_encoded_image_input_beside_the_tensor() -> None:
    ours = v2_model(
        [("input", F32, [-1, 3, 224, 224]), ("images", BYTES, [-1])],
        [("logits", F32, [-1, 1000])],
    )
    assert ours.takes_images and ours.image_input == "images"
    np.testing.assert_array_equal(ours.image_batch([b"a", b"b"]), bytes_array([b"a", b"b"]))
    # The tensor input alone is what a tensor record must match.
    assert conform({"input": np.zeros((1, 3, 224, 224))}, ours)["input"].dtype == np.float32
    plain = v2_model([("input", F32, [-1, 3, 224, 224])], [("logits", F32, [-1, 1000])])
    assert not plain.takes_images
    triton = v2_model([("image_bytes", BYTES, [-1, 1])], [("classes", BYTES, [-1, 5])])
    assert triton.image_batch([b"a", b"b"]).shape == (2, 1)


def test_tf_metadata_sends_images_to_the_signature_that_takes_them() -> None:
    signatures = {
        "serving_default": ([("input", F32, [-1, 224, 224, 3])], [("logits", F32, [-1, 5])]),
        "serving_images": ([("images", BYTES, [-1])], [("classes", BYTES, [-1, 5])]),
    }
    served = tf_model(signatures, "serving_default")
    assert [t.name for t in served.inputs] == ["input"]
    assert (served.image_input, served.image_signature) == ("images", "serving_images")
    assert not tf_model({"serving_default": signatures["serving_default"]}, "serving_default")\
        .takes_images  # fmt: skip
    with pytest.raises(InvalidInput, match="no signature 'other'"):
        tf_model(signatures, "other")


def test_metadata_is_read_again_only_for_references_that_may_change() -> None:
    clock = FakeClock()
    reads: list[ModelRef] = []

    def read(ref: ModelRef) -> ServedModel:
        reads.append(ref)
        return _model(F32)

    cache = MetadataCache(read, ttl_s=30, clock=clock)
    latest, pinned = ModelRef("m"), ModelRef("m", 2)
    for _ in range(3):
        cache.get(latest)
        cache.get(pinned)
    assert reads == [latest, pinned]
    clock.now += 31
    cache.get(latest)
    cache.get(pinned)
    assert reads == [latest, pinned, latest]  # a pinned version never changes

"""Image presets: each scales pixels as its name says; size and layout come from the shape."""

from __future__ import annotations

import numpy as np
import pytest

from streaminfer.errors import ConfigError
from streaminfer.images.preprocess import preprocess_array
from streaminfer.images.presets import ImageOptions, image_preprocess, parse_size

PIXELS = np.array([[[0, 128, 255], [255, 0, 64]]] * 2, dtype=np.uint8)  # 2x2 RGB


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("raw", PIXELS.astype(np.float32)),
        ("inception", PIXELS.astype(np.float32) / 127.5 - 1),
    ],
)
def test_presets_scale_pixels(preset: str, expected: np.ndarray) -> None:
    spec = image_preprocess(preset, [-1, 2, 2, 3])
    out = preprocess_array(PIXELS, spec)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_imagenet_normalises_per_channel_in_nchw() -> None:
    spec = image_preprocess("imagenet", [-1, 3, 2, 2])
    out = preprocess_array(PIXELS, spec)
    assert out.shape == (3, 2, 2)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (PIXELS / 255 - mean) / std
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), atol=1e-5)


def test_an_ambiguous_shape_takes_the_given_or_the_preset_layout() -> None:
    shape = [-1, 3, 3, 3]  # channels could be first or last
    assert image_preprocess("imagenet", shape).layout == "NCHW"
    assert image_preprocess("inception", shape).layout == "NHWC"
    assert image_preprocess("imagenet", shape, layout="NHWC").layout == "NHWC"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: image_preprocess("vgg", [-1, 3, 4, 4]), "unknown preprocess preset 'vgg'"),
        (lambda: image_preprocess("raw", [-1, 12]), "has shape \\[-1, 12\\]"),
        (lambda: image_preprocess("raw", [-1, 4, 4, 1]), "3 channels"),
        (lambda: image_preprocess("raw", [-1, 3, 8, 8], size=(4, 4)), "contradicts"),
        (lambda: image_preprocess("raw", [-1, 3, -1, -1]), "give --input-size"),
        (lambda: parse_size("224x"), "N or HxW"),
        (lambda: ImageOptions.parse("raw", None, "CHW"), "NCHW or NHWC"),
    ],
)
def test_bad_options_are_refused(call: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()  # type: ignore[operator]


def test_options_from_flags() -> None:
    options = ImageOptions.parse("imagenet", "240x320", None)
    spec = options.resolve([-1, 3, -1, -1])
    assert (spec.size, spec.layout) == ((240, 320), "NCHW")
    assert parse_size("224") == (224, 224)

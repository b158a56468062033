"""Decoding and preprocessing on real encoded images, checked numerically."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image

from streaminfer.images import (
    CorruptImage,
    DecompressionBomb,
    NotAnImage,
    decode_image,
    preprocess_array,
    preprocess_image,
)
from streaminfer.images.decode import open_image
from streaminfer.images.preprocess import _draft_size
from streaminfer.models.metadata import ImagePreprocess
from tests.test_images.cases import bomb_png, encode


def unnormalized(**options: Any) -> ImagePreprocess:
    """A spec whose output is simply pixel / 255, so values can be checked exactly."""
    return ImagePreprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **options)


def chelsea() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())


# --- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(encode(chelsea(), fmt))
    assert image.mode == "RGB"
    assert image.size == (451, 300)
    assert np.abs(np.asarray(image, dtype=float) - skimage.data.chelsea()).mean() < 12


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x00garbage" * 10, r"unknown binary data, 80 bytes"),
        (b"<html><body>Forbidden</body></html>", "HTML"),
        (b"user=root password=hunter2", "looks like text"),
        (encode(Image.new("RGB", (8, 8)), "TIFF"), "JPEG, PNG, WebP, GIF or BMP"),
    ],
)
def test_not_an_image(data: bytes, match: str) -> None:
    with pytest.raises(NotAnImage, match=match) as caught:
        decode_image(data)
    assert data[1:8] not in str(caught.value).encode() or not data  # never quotes the bytes


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_corrupt_not_padded(fmt: str) -> None:
    data = encode(chelsea(), fmt)
    with pytest.raises(CorruptImage, match="truncated"):
        decode_image(data[: len(data) * 3 // 4])


def test_bomb_past_pillows_hard_limit(bomb: bytes) -> None:
    with pytest.raises(DecompressionBomb):
        decode_image(bomb)


def test_bomb_pillow_only_warns_about_is_refused() -> None:
    data = bomb_png(10_000, 10_000)  # 100 Mpx: Pillow warns but would decode it
    for action in ("ignore", "error"):
        with warnings.catch_warnings():
            warnings.simplefilter(action, Image.DecompressionBombWarning)
            with pytest.raises(DecompressionBomb):
                decode_image(data)


def test_max_pixels_setting(chelsea_jpeg: bytes) -> None:
    assert decode_image(chelsea_jpeg, max_pixels=451 * 300).size == (451, 300)
    with pytest.raises(DecompressionBomb, match="451x300 = 135300 pixels"):
        decode_image(chelsea_jpeg, max_pixels=451 * 300 - 1)
    with pytest.raises(DecompressionBomb):
        preprocess_image(chelsea_jpeg, ImagePreprocess(), max_pixels=1000)


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)  # stored left half red, right half blue
    pixels[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    image = decode_image(encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95))
    assert image.size == (40, 60)
    upright = np.asarray(image, dtype=int)
    assert np.abs(upright[:25] - (255, 0, 0)).max() < 40  # red on top
    assert np.abs(upright[35:] - (0, 0, 255)).max() < 40  # blue below


def _rgb(image: Image.Image, fmt: str = "PNG") -> np.ndarray:
    return np.asarray(decode_image(encode(image, fmt)), dtype=int)


def test_grayscale_becomes_rgb() -> None:
    rgb = _rgb(Image.fromarray(skimage.data.camera()))
    assert rgb.shape == (512, 512, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[..., 0] == skimage.data.camera()).all()
    assert (_rgb(Image.new("1", (4, 4), 1)) == 255).all()


def test_16_bit_grayscale_is_rescaled_not_clipped() -> None:
    levels = np.array([[0, 0x4000, 0x8000, 0xFFFF]], dtype=np.uint16)
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    assert _rgb(image)[0, :, 0].tolist() == [0, 0x40, 0x80, 0xFF]


def test_transparency_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black
    rgba[1, 1] = (0, 0, 255, 255)
    rgb = _rgb(Image.fromarray(rgba))
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert np.abs(rgb[1, 0] - 127).max() <= 1
    assert rgb[1, 1].tolist() == [0, 0, 255]
    assert (_rgb(Image.new("LA", (2, 2), (0, 0))) == 255).all()


def test_a_large_transparent_image_is_composited_band_by_band_as_a_whole() -> None:
    """Three bands of rows, each composited on its own, make what one composite makes."""
    rgba = np.random.default_rng(5).integers(0, 256, (2500, 1000, 4), dtype=np.uint8)
    white = Image.new("RGBA", (1000, 2500), (255, 255, 255, 255))
    whole = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba)).convert("RGB"))
    assert np.abs(_rgb(Image.fromarray(rgba)).astype(int) - whole).max() <= 1


def test_palette_images_become_rgb() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert _rgb(palette)[0, 0].tolist() == [10, 200, 30]
    assert _rgb(palette, "GIF")[0, 0].tolist() == [10, 200, 30]
    palette.info["transparency"] = 1
    assert _rgb(palette)[0, 0].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    rgb = _rgb(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")  # no magenta-cyan ink: red
    assert np.abs(rgb - (255, 0, 0)).max() < 8


# --- preprocessing -------------------------------------------------------------------------


def test_output_is_normalized_float32_nchw() -> None:
    color = (200, 100, 50)
    data = encode(Image.new("RGB", (320, 240), color), "PNG")
    spec = ImagePreprocess()
    out = preprocess_image(data, spec)
    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    expected = (np.array(color) / 255 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(
        out.reshape(3, -1).T, np.broadcast_to(expected, (224 * 224, 3)), 1e-5
    )


def test_nhwc_is_the_transpose_of_nchw(chelsea_jpeg: bytes) -> None:
    nchw = preprocess_image(chelsea_jpeg, ImagePreprocess())
    nhwc = preprocess_image(chelsea_jpeg, ImagePreprocess(layout="NHWC"))
    assert nhwc.shape == (224, 224, 3)
    np.testing.assert_allclose(nhwc, nchw.transpose(1, 2, 0), atol=1e-6)


def _column_gradient(width: int, height: int) -> np.ndarray:
    """Red encodes the column (x // 2), green the row."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = (np.arange(width) // 2)[None, :]
    pixels[..., 1] = np.arange(height)[:, None]
    return pixels


def test_center_crop_without_resize() -> None:
    spec = unnormalized(size=(224, 224), resample="nearest")
    out = preprocess_array(_column_gradient(448, 224), spec)
    assert np.round(out[0, 0] * 255).tolist() == [(112 + j) // 2 for j in range(224)]
    assert np.round(out[1, :, 0] * 255).tolist() == list(range(224))


def test_resize_shorter_then_center_crop() -> None:
    spec = unnormalized(size=(224, 224), resize_shorter=256, resample="nearest")
    out = preprocess_array(_column_gradient(512, 512), spec)
    # Scaled by 1/2 to 256x256, cropped from 16 on: output column j is source column 33 + 2j.
    assert np.round(out[0, 0] * 255).tolist() == [(33 + 2 * j) // 2 for j in range(224)]


def test_non_square_crop_and_a_too_small_resize_never_leave_the_image() -> None:
    out = preprocess_array(np.full((480, 640, 3), 90, np.uint8), ImagePreprocess(size=(224, 320)))
    assert out.shape == (3, 224, 320)
    spec = unnormalized(size=(224, 224), resize_shorter=100)
    out = preprocess_array(np.full((300, 400, 3), 90, np.uint8), spec)
    np.testing.assert_allclose(out, 90 / 255, atol=1e-6)  # no zero padding anywhere


def test_preprocess_array_matches_the_decoded_path(coffee_png: bytes) -> None:
    spec = ImagePreprocess(resize_shorter=256, resample="bicubic")
    np.testing.assert_array_equal(
        preprocess_array(skimage.data.coffee(), spec), preprocess_image(coffee_png, spec)
    )


@pytest.mark.parametrize(
    "array",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)],
)
def test_preprocess_array_rejects_other_arrays(array: np.ndarray) -> None:
    with pytest.raises(NotAnImage, match=r"shape \(H, W, 3\)"):
        preprocess_array(array, ImagePreprocess())


def test_jpeg_draft_decodes_smaller_with_the_same_result() -> None:
    large = encode(chelsea().resize((1800, 1200), Image.Resampling.BICUBIC), "JPEG", quality=90)
    spec = ImagePreprocess(resize_shorter=256)
    image = open_image(large)
    image.draft("RGB", _draft_size(image.size, spec))
    assert image.size == (450, 300)  # libjpeg decodes at 1/4 scale
    fast = preprocess_image(large, spec)
    full = preprocess_image(large, spec, draft=False)
    assert fast.shape == full.shape == (3, 224, 224)
    assert np.abs(fast - full).mean() < 0.05

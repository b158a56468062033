"""Decode encoded images with Pillow into upright RGB, refusing bombs and broken files.

Decoding is split in two steps, :func:`open_image` (identify and check the size, no
pixels yet) and :func:`load_rgb` (decode, orient, convert), so that preprocessing can
ask the JPEG decoder for a reduced size in between.

Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False (its
default): when True, Pillow pads truncated images instead of failing.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from streaminfer.images.errors import CorruptImage, DecompressionBomb, NotAnImage

DEFAULT_MAX_PIXELS = 50_000_000
"""About a 50-megapixel photo: 150 MB of RGB when decoded at full size."""

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
"""The formats accepted; limiting Pillow to them also limits the decoder attack surface."""

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BAND_PIXELS = 1 << 20  # composited at a time: 4 MB of RGBA
# What Pillow raises on bytes that start like an image but do not decode.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFile.ImageFile:
    """Identify the image and check its dimensions, before any pixel is decoded.

    The effective limit is the smaller of ``max_pixels`` and Pillow's own
    ``Image.MAX_IMAGE_PIXELS``, so an image Pillow would only warn about is refused
    here rather than decoded.
    """
    if not data:
        raise NotAnImage("the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception where warnings are turned into errors.
        raise DecompressionBomb(f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage(
            f"not a JPEG, PNG, WebP, GIF or BMP image ({_looks_like(data)}, {len(data)} bytes)"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"cannot read the image header: {exc}") from exc
    width, height = image.size
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width * height > limit:
        raise DecompressionBomb(
            f"image is {width}x{height} = {width * height} pixels, more than the limit "
            f"of {limit} (max_pixels)"
        )
    return image


def _looks_like(data: bytes) -> str:
    """What unrecognised bytes seem to be, never quoting them: they may be a file's contents."""
    head = data[:512].lstrip()
    if head.startswith(b"<"):
        return "it looks like HTML or XML"
    if head.isascii() and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it looks like text"
    return "unknown binary data"


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode the pixels, apply the EXIF orientation and convert to 8-bit RGB.

    Transparent images are composited on white, the background most models saw in
    training for product photos and icons.
    """
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"cannot decode the {image.format} image: {exc}") from exc
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode.startswith("I"):
        # 16-bit greyscale PNG: Pillow's convert() would clip to 255, not rescale.
        image = Image.fromarray((np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _on_white(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _on_white(image: Image.Image) -> Image.Image:
    """The image composited on white, a band of rows at a time: converted to RGBA whole,
    with its alpha taken out, a 31-megapixel PNG held 13 bytes a pixel at once, not 8."""
    width, height = image.size
    rgb = Image.new("RGB", image.size, _WHITE)
    rows = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        band = image.crop(box).convert("RGBA")
        rgb.paste(band, box, mask=band)  # an RGBA mask is its alpha
    return rgb


def peak_bytes(image: Image.Image) -> int:
    """The most :func:`load_rgb` holds for an image opened but not decoded: Pillow keeps 1
    byte a pixel for L and P, 2 for 16-bit greyscale and 4 for the rest, and the RGB copy
    takes 4 more unless the image is RGB already (composited bands are small)."""
    width, height = image.size
    own = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    copy = 0 if image.mode == "RGB" else 4
    return width * height * (own + copy)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an encoded image to an upright RGB Pillow image at full size."""
    return load_rgb(open_image(data, max_pixels=max_pixels))

"""Turn an image into a model's float input, as an :class:`ImagePreprocess` spec says.

The resize and the center crop are one Pillow ``resize`` of the crop's source box,
so no pixel outside the crop is ever resampled; JPEGs are decoded by libjpeg at a
reduced scale (``draft``) when the model needs far fewer pixels than the photo has,
which is most of the cost saved on large photos.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from streaminfer.images.decode import DEFAULT_MAX_PIXELS, load_rgb, open_image, peak_bytes
from streaminfer.images.errors import DecompressionBomb, NotAnImage
from streaminfer.models.metadata import ImagePreprocess

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


# A JPEG is decoded at a reduced scale (draft); other formats only at full size: this bound
# on what one decode holds (decode.peak_bytes) keeps it within the server's memory target.
# 40 megapixels of RGB, 32 of greyscale or a palette, 20 with transparency or in CMYK.
MAX_DECODED_BYTES = 160 << 20


def preprocess_image(
    data: bytes,
    spec: ImagePreprocess,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> np.ndarray:
    """Decode an encoded image and preprocess it: float32 ``[3, H, W]`` (``[H, W, 3]`` for NHWC).

    With ``draft`` a JPEG is decoded at the smallest power-of-two reduction that still
    covers the model's input, which changes the result only by resampling noise.
    """
    image = open_image(data, max_pixels=max_pixels)
    if draft:
        image.draft("RGB", _draft_size(image.size, spec))
    width, height = image.size  # what will be decoded: a JPEG's draft size, else all of it
    if peak_bytes(image) > MAX_DECODED_BYTES:
        raise DecompressionBomb(
            f"image is {width}x{height} = {width * height} pixels to decode at full size "
            f"({image.format} has no reduced decoding), {peak_bytes(image) >> 20} MB in "
            f"{image.mode}, more than {MAX_DECODED_BYTES >> 20} MB"
        )
    return _to_input(load_rgb(image), spec)


def preprocess_array(rgb: np.ndarray, spec: ImagePreprocess) -> np.ndarray:
    """Preprocess an already decoded ``uint8`` RGB image of shape ``[H, W, 3]``."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise NotAnImage(
            f"expected a non-empty uint8 RGB array of shape (H, W, 3), "
            f"got {rgb.dtype} of shape {rgb.shape}"
        )
    return _to_input(Image.fromarray(rgb), spec)


def _draft_size(size: tuple[int, int], spec: ImagePreprocess) -> tuple[int, int]:
    """A decode size whose shorter side covers the crop in either EXIF orientation."""
    width, height = size
    crop_h, crop_w = spec.size
    scale = max(spec.resize_shorter or 0, crop_h, crop_w) / min(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def _resize_crop(image: Image.Image, spec: ImagePreprocess) -> Image.Image:
    """Resize so the crop fits (shorter side to ``resize_shorter``) and cut the center out.

    Without ``resize_shorter`` the image is scaled just enough to cover the crop; a
    ``resize_shorter`` too small to cover it is raised to what covers it, so the crop
    never reaches past the image.
    """
    width, height = image.size
    crop_h, crop_w = spec.size
    scale = max(crop_h / height, crop_w / width)
    if spec.resize_shorter is not None:
        scale = max(scale, spec.resize_shorter / min(width, height))
    box_w, box_h = crop_w / scale, crop_h / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return image.resize(
        (crop_w, crop_h), _RESAMPLE[spec.resample], box=(left, top, left + box_w, top + box_h)
    )


def _to_input(image: Image.Image, spec: ImagePreprocess) -> np.ndarray:
    """Resize, crop, scale to [0, 1] and normalize, in the spec's layout."""
    pixels = np.asarray(_resize_crop(image, spec))
    std = np.asarray(spec.std, dtype=np.float32)
    # (x / 255 - mean) / std as one multiply-add.
    gain = 1.0 / (255.0 * std)
    offset = -np.asarray(spec.mean, dtype=np.float32) / std
    if spec.layout == "NCHW":
        out = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
        out *= gain[:, None, None]
        out += offset[:, None, None]
    else:
        out = pixels.astype(np.float32)
        out *= gain
        out += offset
    return out

"""Images in records: fetch them safely by URI, decode them, and preprocess them for a model.

Every failure raises a :class:`~streaminfer.images.errors.ImageError`, a
:class:`~streaminfer.errors.RecordError` whose ``reason`` names the cause.
"""

from streaminfer.images.decode import DEFAULT_MAX_PIXELS, FORMATS, decode_image
from streaminfer.images.errors import (
    CorruptImage,
    DecompressionBomb,
    ForbiddenAddress,
    ForbiddenFile,
    ImageError,
    ImageFetchFailed,
    ImageFetchTimeout,
    ImageNotFound,
    ImageTooLarge,
    InvalidImageURI,
    NotAnImage,
    TooManyRedirects,
)
from streaminfer.images.fetch import FetchPolicy, ImageFetcher
from streaminfer.images.preprocess import preprocess_array, preprocess_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "CorruptImage",
    "DecompressionBomb",
    "FetchPolicy",
    "ForbiddenAddress",
    "ForbiddenFile",
    "ImageError",
    "ImageFetchFailed",
    "ImageFetchTimeout",
    "ImageFetcher",
    "ImageNotFound",
    "ImageTooLarge",
    "InvalidImageURI",
    "NotAnImage",
    "TooManyRedirects",
    "decode_image",
    "preprocess_array",
    "preprocess_image",
]

"""Why an image could not be fetched or decoded.

Every error here is a :class:`~streaminfer.errors.RecordError`: the fault lies with
one input (its URI, the server it points at, or its bytes), so the stream worker
dead-letters that record with ``reason`` as the reason header and goes on.  The
``reason`` codes are part of the product's interface: never rename one.
"""

from __future__ import annotations

from streaminfer.errors import RecordError


class ImageError(RecordError):
    """Base of every image fetch or decode failure."""

    reason = "image_error"


class InvalidImageURI(ImageError):
    """The URI is malformed or has a scheme other than http, https, file or data."""

    reason = "bad_uri"


class ImageNotFound(ImageError):
    """The server answered 404 or 410, or the local file does not exist."""

    reason = "not_found"


class ImageFetchFailed(ImageError):
    """Any other fetch failure: an error status, a refused connection, an unknown host."""

    reason = "fetch_failed"


class ImageFetchTimeout(ImageError):
    """Connecting, waiting for data, or the whole fetch took longer than the policy allows."""

    reason = "timeout"


class ImageTooLarge(ImageError):
    """The encoded image is larger than the policy's ``max_bytes``."""

    reason = "too_large"


class TooManyRedirects(ImageError):
    """The server redirected more often than the policy's ``max_redirects``."""

    reason = "too_many_redirects"


class ForbiddenAddress(ImageError):
    """The policy forbids the target: a non-public address (SSRF guard) or a disabled scheme."""

    reason = "forbidden_address"


class NotAnImage(ImageError):
    """The bytes are not in a supported image format (HTML, garbage, empty)."""

    reason = "not_an_image"


class CorruptImage(ImageError):
    """The bytes start like an image but cannot be decoded completely (e.g. truncated)."""

    reason = "corrupt_image"


class DecompressionBomb(ImageError):
    """The image claims more pixels than the decoder's ``max_pixels`` allows."""

    reason = "decompression_bomb"


class ForbiddenFile(ImageError):
    """A ``file:`` URI or path names a file outside the folders allowed with ``--allow-files``."""

    reason = "forbidden"

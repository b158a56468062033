"""Sample photos for the demo, the benchmark and the tests: the ones scikit-image ships.

No image is downloaded: scikit-image carries them in its package (the ``demo`` extra).
"""

from __future__ import annotations

import io

from streaminfer.errors import ConfigError

SAMPLE_IMAGES = ("chelsea", "coffee", "rocket", "astronaut")  # cat, espresso, rocket, person


def sample_jpegs(names: tuple[str, ...] = SAMPLE_IMAGES) -> dict[str, bytes]:
    """The named ``skimage.data`` photos as JPEG bytes (quality 92), by name."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ConfigError(
            "the sample photos come from scikit-image: pip install 'streaminfer[demo]' "
            "(make install does this)"
        ) from exc
    from PIL import Image

    encoded = {}
    for name in names:
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, "JPEG", quality=92)
        encoded[name] = buffer.getvalue()
    return encoded

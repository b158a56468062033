"""Sample photos for the demo, the benchmark and the tests: the ones scikit-image ships.

No image is downloaded: scikit-image carries them in its package (the ``demo`` and
``bench`` extras).
"""

from __future__ import annotations

import io

from streaminfer.extras import require

SAMPLE_IMAGES = ("chelsea", "coffee", "rocket", "astronaut")  # cat, espresso, rocket, person


def sample_jpegs(names: tuple[str, ...] = SAMPLE_IMAGES) -> dict[str, bytes]:
    """The named ``skimage.data`` photos as JPEG bytes (quality 92), by name."""
    from PIL import Image

    data = require("skimage.data", "demo")

    encoded = {}
    for name in names:
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, "JPEG", quality=92)
        encoded[name] = buffer.getvalue()
    return encoded

"""Named image preprocessing conventions (``--preprocess PRESET``), one definition for every
command that offers them.

A preset fixes how pixels are scaled; the input size and layout come from the model's
input shape when it states them, else from ``--input-size`` / ``--layout``, else from the
preset's usual layout:

- ``imagenet``: torchvision's mean/std normalisation, NCHW (most PyTorch exports);
- ``inception``: pixels scaled to [-1, 1], NHWC (Keras/TF Inception and MobileNet);
- ``raw``: pixel values 0-255 as floats, NHWC (models that normalise inside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streaminfer.errors import ConfigError
from streaminfer.models.metadata import ImagePreprocess

Layout = Literal["NCHW", "NHWC"]


@dataclass(frozen=True)
class Preset:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: Layout


PRESETS = {
    "imagenet": Preset((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "NCHW"),
    # (x / 255 - 0.5) / 0.5 spans [-1, 1].
    "inception": Preset((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "NHWC"),
    # (x / 255 - 0) / (1 / 255) is x itself.
    "raw": Preset((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), "NHWC"),
}


@dataclass(frozen=True)
class ImageOptions:
    """What the user said: ``--preprocess``, ``--input-size``, ``--layout``."""

    preset: str
    size: tuple[int, int] | None = None
    layout: Layout | None = None

    @classmethod
    def parse(cls, preset: str, size: str | None, layout: str | None) -> ImageOptions:
        """From flag texts; ConfigError names the bad one."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown preprocess preset {preset!r}; known: {', '.join(PRESETS)}")
        if layout is not None and layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"layout must be NCHW or NHWC, got {layout!r}")
        return cls(preset, parse_size(size) if size else None, layout)  # type: ignore[arg-type]

    def resolve(self, input_shape: list[int] | None) -> ImagePreprocess:
        """The preprocessing for a model whose image input has ``input_shape``."""
        return image_preprocess(self.preset, input_shape, self.size, self.layout)


def image_preprocess(
    preset: str,
    input_shape: list[int] | None = None,
    size: tuple[int, int] | None = None,
    layout: Layout | None = None,
) -> ImagePreprocess:
    """The preprocessing for a model whose image input has ``input_shape`` (``-1`` dynamic).

    Raises ``ConfigError`` for an unknown preset, a shape that is not one RGB image per
    row, a size or layout that contradicts the shape, or a size nobody gave.
    """
    chosen = PRESETS.get(preset)
    if chosen is None:
        raise ConfigError(f"unknown preprocess preset {preset!r}; known: {', '.join(PRESETS)}")
    if input_shape is not None and len(input_shape) != 4:
        raise ConfigError(
            f"an image input has 4 dimensions (batch, height, width, channels in some order), "
            f"this one has shape {input_shape}"
        )
    layout = layout or _layout_of(input_shape) or chosen.layout
    size = _size(input_shape, layout, size)
    return ImagePreprocess(size=size, mean=chosen.mean, std=chosen.std, layout=layout)


def parse_size(text: str) -> tuple[int, int]:
    """``224`` or ``224x192`` (height x width) as a size; ConfigError otherwise."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.isdigit() and int(p) > 0 for p in parts):
        height, width = int(parts[0]), int(parts[-1])
        return height, width
    raise ConfigError(f"input size must be N or HxW with positive integers, got {text!r}")


def _layout_of(shape: list[int] | None) -> Layout | None:
    """The layout a shape proves: channels (3) on axis 1 or axis 3, but not both."""
    if shape is None:
        return None
    first, last = shape[1] == 3, shape[3] == 3
    if first != last:
        return "NCHW" if first else "NHWC"
    return None


def _size(
    shape: list[int] | None, layout: Layout, given: tuple[int, int] | None
) -> tuple[int, int]:
    if shape is None:
        if given is None:
            raise ConfigError("give the model's input size (--input-size)")
        return given
    channels, height, width = (shape[1], shape[2], shape[3])
    if layout == "NHWC":
        height, width, channels = shape[1], shape[2], shape[3]
    if channels not in (3, -1):
        raise ConfigError(f"an {layout} image input has 3 channels, the model's shape is {shape}")
    from_shape = (height, width)
    if given is not None:
        if any(s not in (-1, g) for s, g in zip(from_shape, given, strict=True)):
            raise ConfigError(f"input size {given} contradicts the model's input shape {shape}")
        return given
    if -1 in from_shape:
        raise ConfigError(
            f"the model's input shape {shape} leaves the image size open; give --input-size"
        )
    return from_shape

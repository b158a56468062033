"""Export models into a model repository (``<repo>/<model>/<version>/``) without torch."""

from __future__ import annotations

from pathlib import Path

import onnx

from streaminfer.errors import ConfigError
from streaminfer.models.export.efficientnet import (
    build_efficientnet_lite0,
    imagenet_labels,
    lite0_metadata,
    lite0_weights_path,
    uncovered_weights,
)
from streaminfer.models.export.pth import load_state_dict, parameter_count
from streaminfer.models.layout import next_version, write_version_atomically

__all__ = [
    "build_efficientnet_lite0",
    "export_efficientnet_lite0",
    "load_state_dict",
    "next_version",
    "parameter_count",
    "uncovered_weights",
    "write_version_atomically",
]

LABELS_FILE = "labels.txt"


def export_efficientnet_lite0(
    repo: Path, version: int | None = None, model_name: str = "efficientnet-lite0"
) -> Path:
    """Write EfficientNet-Lite0 (ONNX, labels, metadata) as a new version; return its folder.

    ``version=None`` takes one more than the highest existing version.  Raises
    ``ConfigError`` if that version exists already.
    """
    if model_name in ("", ".", "..") or "/" in model_name or "\\" in model_name:
        raise ConfigError(f"invalid model name {model_name!r}")
    state_dict = load_state_dict(lite0_weights_path())
    model = build_efficientnet_lite0(state_dict)
    unused = uncovered_weights(model, state_dict)
    if unused:
        raise ConfigError(f"weights not used by the graph: {', '.join(unused)}")
    onnx.checker.check_model(model, full_check=True)
    labels = imagenet_labels()
    metadata = lite0_metadata(LABELS_FILE)

    def fill(folder: Path) -> None:
        onnx.save_model(model, folder / metadata.model_file)
        (folder / LABELS_FILE).write_text("\n".join(labels) + "\n")
        metadata.write(folder)

    return write_version_atomically(repo / model_name, version, fill)

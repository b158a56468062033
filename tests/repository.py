"""Model repositories that tests change under a running server or worker."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

MODEL = "efficientnet-lite0"  # the exported model of the ``model_repo`` fixture


def copy_repo(source: Path, target: Path) -> Path:
    """A repository of hard links to ``source``'s files, for a server that changes it."""
    shutil.copytree(source, target, copy_function=_link)
    return target


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


def add_version(model_dir: Path, source: Path, version: int) -> Path:
    """Publish a copy of ``source`` as ``version`` atomically: temp folder, then rename."""
    staging = model_dir / f".tmp-{uuid.uuid4().hex}"
    shutil.copytree(source, staging)
    return staging.rename(model_dir / str(version))

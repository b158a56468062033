"""Write a model version so that readers only ever see it complete.

A repository holds ``<repo>/<model>/<version>/`` folders named by positive integers.  A
new version is filled in a sibling folder whose name is not a positive integer (readers
ignore it), then renamed into place in one step.  Versions are immutable: an existing one
is never replaced.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from streaminfer.errors import ConfigError

TEMP_PREFIX = ".tmp-"


def parse_version(name: str) -> int | None:
    """The version a folder name denotes, or None if it is not a positive integer."""
    if name.isascii() and name.isdigit() and int(name) > 0:
        return int(name)
    return None


def next_version(model_dir: Path) -> int:
    """One more than the highest existing version, 1 for a new model."""
    if not model_dir.is_dir():
        return 1
    versions = [parse_version(p.name) for p in model_dir.iterdir() if p.is_dir()]
    return max((v for v in versions if v is not None), default=0) + 1


def write_version_atomically(
    model_dir: Path, version: int | None, fill: Callable[[Path], None]
) -> Path:
    """Create ``model_dir/<version>`` with the files ``fill`` writes into the folder it gets.

    ``version=None`` takes the next free version.  Raises ``ConfigError`` if the version
    already exists; on failure no partial version or temporary folder is left behind.
    """
    if version is not None and version < 1:
        raise ConfigError(f"model version must be a positive integer, got {version}")
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    final = model_dir / str(version)
    if final.exists():
        raise ConfigError(f"{final} already exists; versions are immutable, choose another")
    temp = model_dir / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    temp.mkdir()
    try:
        fill(temp)
        _fsync_tree(temp)
        try:
            os.rename(temp, final)
        except OSError as exc:
            # Another writer took this version meanwhile (rename refuses a non-empty target).
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ConfigError(f"{final} already exists; versions are immutable") from exc
            raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _fsync(model_dir)
    return final


def _fsync_tree(root: Path) -> None:
    """Flush the files and then the folders to disk, so a crash cannot expose a torn version."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

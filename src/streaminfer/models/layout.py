"""The model repository on disk: finding its versions, and writing one atomically.

A repository holds ``<repo>/<model>/<version>/`` folders named by positive integers;
any other name (such as a writer's ``.tmp-*`` folder) is not a version.  A new version
is filled in such a sibling folder, then renamed into place in one step, so readers
only ever see it complete.  Versions are immutable: an existing one is never replaced.
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

Fingerprint = tuple[tuple[str, int, int], ...]
"""Each file of a version folder as (relative path, size, mtime in ns)."""


def parse_version(name: str) -> int | None:
    """The version a folder name denotes, or None if it is not a positive integer."""
    if name.isascii() and name.isdigit() and int(name) > 0:
        return int(name)
    return None


def scan_repository(root: Path) -> dict[str, dict[int, Path]]:
    """``{model: {version: dir}}`` for every version folder under ``root``."""
    if not root.is_dir():
        raise ConfigError(f"model repository {root} does not exist")
    found: dict[str, dict[int, Path]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = {}
        for folder in model_dir.iterdir():
            version = parse_version(folder.name)
            if version is not None and folder.is_dir():
                versions[version] = folder
        if versions:
            found[model_dir.name] = versions
    return found


def fingerprint(version_dir: Path) -> Fingerprint:
    """Names, sizes and mtimes of a version's files: a change means it was replaced.

    A file deleted while the folder is read is left out: the next look sees what stays.
    """
    entries = []
    try:
        paths = sorted(version_dir.rglob("*"))
    except FileNotFoundError:
        return ()  # the folder itself went while it was read
    for path in paths:
        try:
            if path.is_file():
                stat = path.stat()
                entries.append((str(path.relative_to(version_dir)), stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            continue
    return tuple(entries)


def model_versions(model_dir: Path) -> list[int]:
    """The versions of a model folder, in order; none if there is no such folder."""
    try:
        folders = [p for p in model_dir.iterdir() if p.is_dir()]
    except OSError:  # no such model (yet)
        return []
    return sorted(v for p in folders if (v := parse_version(p.name)) is not None)


def next_version(model_dir: Path) -> int:
    """One more than the highest existing version, 1 for a new model."""
    return max(model_versions(model_dir), default=0) + 1


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

"""Deploy a model version from where it was published: fetch, verify, unpack, check, install.

A version's *location* is a local path, a ``file://`` URL or an ``http(s)://`` URL of a
version folder (local only) or of an archive of one (``.tar.gz``, ``.tar`` or ``.zip``;
recognised by content, not by name).  Its *digest* pins the exact bytes, so every follower
installs the model the publisher checked:

- an archive's digest is the sha256 of the archive file;
- a folder's digest is the sha256 of its manifest: one line ``<sha256 of file>  <path>\\n``
  per regular file, the path relative and ``/``-separated, lines sorted by path (UTF-8
  bytes); the same as ``(cd DIR && find . -type f -printf '%P\\0' | LC_ALL=C sort -z |
  xargs -0 sha256sum) | sha256sum`` for names without backslashes or newlines.

Unpacking never escapes the target: absolute paths, ``..``, links and device files are
refused and the unpacked size is bounded.  An archive may hold the version's files at its
root or inside one top-level folder.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx

from streaminfer.errors import ConfigError
from streaminfer.models.layout import write_version_atomically
from streaminfer.models.metadata import METADATA_FILE, ModelMetadata
from streaminfer.models.runtime import OnnxModel, RuntimeOptions

_CHUNK = 1 << 20


class DeployError(ConfigError):
    """A version cannot be deployed: unreachable, wrong digest, unsafe archive, not a model."""


@dataclass(frozen=True)
class DeployLimits:
    """Bounds on fetching and unpacking, and whether local paths may be deployed.

    Locations come from the control topic, which only operators write, so http(s) may
    reach any address (loopback and private too); ``allow_file=False`` stops a follower
    from reading its own filesystem when publishers do not share one with it.
    """

    max_bytes: int = 4 * 1024**3  # download size, and unpacked size
    timeout: float = 600.0  # whole download
    connect_timeout: float = 10.0
    allow_file: bool = True


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest(path: Path) -> str:
    """The digest of a version folder (its manifest) or of an archive file (its bytes)."""
    if path.is_dir():
        return hashlib.sha256(_manifest(path)).hexdigest()
    if path.is_file():
        return file_digest(path)
    raise DeployError(f"{path}: no such file or folder")


def _manifest(folder: Path) -> bytes:
    lines = []
    for path in folder.rglob("*"):
        if path.is_symlink():
            raise DeployError(f"{path} is a symbolic link; a version holds regular files only")
        if path.is_file():
            lines.append((path.relative_to(folder).as_posix(), file_digest(path)))
    lines.sort(key=lambda line: line[0].encode())
    return "".join(f"{sha}  {name}\n" for name, sha in lines).encode()


def to_location(text: str) -> str:
    """The location to publish: a URL as given, a local path as an absolute ``file://`` URL."""
    if "://" in text:
        scheme = urllib.parse.urlsplit(text).scheme
        if scheme not in ("http", "https", "file"):
            raise DeployError(f"unsupported location {text!r}: use a path, file://, http(s)://")
        return text
    return Path(text).resolve().as_uri()


@contextmanager
def fetched(location: str, limits: DeployLimits) -> Iterator[Path]:
    """A local path holding what ``location`` names: the file itself, or a bounded download."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme in ("http", "https"):
        with tempfile.TemporaryDirectory(prefix="streaminfer-fetch-") as folder:
            target = Path(folder) / "download"
            _download(location, target, limits)
            yield target
        return
    if not limits.allow_file:
        raise DeployError(f"{location}: local files may not be deployed here (allow_file=False)")
    path = (
        Path(urllib.request.url2pathname(parts.path)) if parts.scheme == "file" else Path(location)
    )
    if not path.exists():
        raise DeployError(f"{location}: no such file or folder")
    yield path


def _download(url: str, target: Path, limits: DeployLimits) -> None:
    deadline = time.monotonic() + limits.timeout
    timeout = httpx.Timeout(limits.timeout, connect=limits.connect_timeout)
    size = 0
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=3) as client,
            client.stream("GET", url) as response,
            target.open("wb") as out,
        ):
            if response.status_code != 200:
                raise DeployError(f"cannot fetch {url}: HTTP {response.status_code}")
            for chunk in response.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise DeployError(f"{url} is larger than {limits.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise DeployError(f"fetching {url} took longer than {limits.timeout:.0f} s")
                out.write(chunk)
    except httpx.HTTPError as exc:
        raise DeployError(f"cannot fetch {url}: {exc or type(exc).__name__}") from exc


def unpack(archive: Path, target: Path, max_bytes: int) -> None:
    """Extract a .tar(.gz) or .zip archive into ``target``, refusing anything unsafe."""
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, target, max_bytes)
    else:
        _unpack_tar(archive, target, max_bytes)
    entries = list(target.iterdir())
    if not (target / METADATA_FILE).exists() and len(entries) == 1 and entries[0].is_dir():
        inner = entries[0].rename(target / f".unpacked-{time.monotonic_ns()}")
        for child in inner.iterdir():
            child.rename(target / child.name)
        inner.rmdir()


def _check_member(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise DeployError(f"unsafe path {name!r} in archive")


def _unpack_tar(archive: Path, target: Path, max_bytes: int) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise DeployError(f"archive member {member.name!r} is not a file or folder")
            if sum(m.size for m in members) > max_bytes:
                raise DeployError(f"{archive.name} unpacks to more than {max_bytes} bytes")
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DeployError(f"not a readable .tar.gz or .zip archive: {exc}") from exc


def _unpack_zip(archive: Path, target: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            for info in infos:
                _check_member(info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DeployError(f"archive member {info.filename!r} is a symbolic link")
            if sum(i.file_size for i in infos) > max_bytes:
                raise DeployError(f"{archive.name} unpacks to more than {max_bytes} bytes")
            for info in infos:
                zipped.extract(info, target)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DeployError(f"not a readable .zip archive: {exc}") from exc


def check_model(version_dir: Path) -> None:
    """Refuse a folder that the registry could not serve: bad metadata, ONNX, or labels."""
    try:
        metadata = ModelMetadata.read(version_dir)
        OnnxModel(version_dir, metadata, RuntimeOptions(intra_op_threads=1)).warm_up()
        metadata.labels(version_dir)
    except Exception as exc:  # ORT and file errors alike: the version is not servable
        text = " ".join(str(exc).replace(f"{version_dir}/", "").split()) or type(exc).__name__
        raise DeployError(f"not a valid model: {text[:300]}") from exc


def prepare(location: str, sha256: str | None, target: Path, limits: DeployLimits) -> str:
    """Fill the empty folder ``target`` with the checked version; returns its digest.

    With ``sha256`` given, a different digest is refused; without, it is computed.
    """
    with fetched(location, limits) as source:
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
            actual = digest(target)  # of the copy: what was checked is what is installed
        else:
            actual = file_digest(source)
            if sha256 is None or actual == sha256:
                unpack(source, target, limits.max_bytes)
    if sha256 is not None and actual != sha256:
        raise DeployError(f"digest mismatch for {location}: expected {sha256}, got {actual}")
    check_model(target)
    return actual


def install_version(
    model_dir: Path, version: int, location: str, sha256: str, limits: DeployLimits
) -> Path:
    """Fetch, verify and check a version, then rename it into ``model_dir/<version>``."""

    def fill(target: Path) -> None:
        prepare(location, sha256, target, limits)

    return write_version_atomically(model_dir, version, fill)

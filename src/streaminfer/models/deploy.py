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
refused and the unpacked size and the number of files are bounded.  A tar's members are
checked as their headers are read, so a gzip bomb is refused before its data is
decompressed.  An archive may hold the version's files at its root or inside one
top-level folder.

A local location must be a regular file or a folder holding only regular files and
folders (no device files, FIFOs, sockets or symbolic links, which could block a reader
forever or lead outside); its size is checked before anything is copied or hashed.  A
download is bounded by ``DeployLimits.timeout`` as a whole — connect, headers and body,
however slowly the server sends.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import httpcore
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from streaminfer.config import Settings
from streaminfer.errors import ConfigError
from streaminfer.http_deadline import DeadlineBackend, DeadlinePassed, deadline
from streaminfer.models.layout import write_version_atomically
from streaminfer.models.metadata import METADATA_FILE, ModelMetadata
from streaminfer.models.runtime import OnnxModel, RuntimeOptions

_CHUNK = 1 << 20
# tarfile reads a long name or pax header whole, however large the header claims it is;
# real ones take a few KiB, and member data is read in 16 KiB pieces.
_MAX_TAR_READ = 64 * 1024
_MAX_NAME = 4096  # bytes in a member's path: PATH_MAX on Linux
# A zip's central directory, read whole by zipfile with an object made of every entry:
# at most this much a file allowed (46 bytes and its name, extra field and comment).
_ZIP_ENTRY_BYTES = 1024
_ZIP_END = b"PK\x05\x06"  # the end of central directory record: 22 bytes and a comment
_DECOMPRESSORS: tuple[tuple[bytes, Callable[[io.BufferedReader], io.BufferedIOBase]], ...] = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)
_MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class DeployError(ConfigError):
    """A version cannot be deployed: unreachable, wrong digest, unsafe archive, not a model."""


@dataclass(frozen=True)
class DeployLimits:
    """Bounds on fetching and unpacking, and whether local paths may be deployed.

    Locations come from the control topic, which only operators write, so http(s) may
    reach any address (loopback and private too); ``allow_file=False`` stops a follower
    from reading its own filesystem when publishers do not share one with it.
    """

    max_bytes: int = 4 * 1024**3  # download size, local size, and unpacked size
    max_files: int = 10_000  # files and folders of a local folder or an archive
    timeout: float = 600.0  # whole download
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # longest silence within a download
    allow_file: bool = True
    check_memory: int = 8 * 1024**3  # address space of the process that runs a model once
    check_timeout: float = 300.0  # loading a model and running it once


_MB = 1024 * 1024


class DeploySettings(Settings):
    """The limits of deployments, as users set them: ``[deploy]`` in the config file and
    ``STREAMINFER_DEPLOY_*`` variables, read by ``serve``, ``run`` and ``models publish``."""

    model_config = SettingsConfigDict(env_prefix="STREAMINFER_DEPLOY_", extra="ignore")
    file_section: ClassVar[str] = "deploy"
    _default: ClassVar[DeployLimits] = DeployLimits()

    max_size_mb: int = Field(default=_default.max_bytes // _MB, ge=1)
    max_files: int = Field(default=_default.max_files, ge=1)
    download_timeout_s: float = Field(default=_default.timeout, gt=0)
    connect_timeout_s: float = Field(default=_default.connect_timeout, gt=0)
    read_timeout_s: float = Field(default=_default.read_timeout, gt=0)
    allow_file: bool = _default.allow_file
    check_memory_mb: int = Field(default=_default.check_memory // _MB, ge=64)
    check_timeout_s: float = Field(default=_default.check_timeout, gt=0)

    def limits(self) -> DeployLimits:
        return DeployLimits(
            max_bytes=self.max_size_mb * _MB,
            max_files=self.max_files,
            timeout=self.download_timeout_s,
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            allow_file=self.allow_file,
            check_memory=self.check_memory_mb * _MB,
            check_timeout=self.check_timeout_s,
        )


def file_digest(path: Path) -> str:
    """The sha256 of a regular file; anything else (a FIFO, a device) is refused unread."""
    digest = hashlib.sha256()
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DeployError(f"{path} is not a regular file")
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest(path: Path) -> str:
    """The digest of a version folder (its manifest) or of an archive file (its bytes)."""
    if _local_kind(path, max_bytes=None, max_files=None) == "folder":
        return hashlib.sha256(_manifest(path)).hexdigest()
    return file_digest(path)


def _local_kind(path: Path, max_bytes: int | None, max_files: int | None) -> str:
    """ "folder" or "file" for a deployable local source within the bounds given."""
    try:
        info = path.stat()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise DeployError(f"{path}: no such file or folder") from exc
    if stat.S_ISDIR(info.st_mode):
        size = sum(info.st_size for info in _folder_files(path, max_files).values())
        kind = "folder"
    elif stat.S_ISREG(info.st_mode):
        size, kind = info.st_size, "file"
    else:
        raise DeployError(f"{path} is not a regular file or folder")
    if max_bytes is not None and size > max_bytes:
        raise DeployError(f"{path} holds more than {max_bytes} bytes")
    return kind


def _folder_files(folder: Path, max_files: int | None = None) -> dict[str, os.stat_result]:
    """A version folder's files by relative path; anything but files and folders is refused,
    and so is a folder with more than ``max_files`` of them, before any is read."""
    files = {}
    seen = 0
    for root, folders, names in os.walk(folder):
        seen += len(folders) + len(names)
        if max_files is not None and seen > max_files:
            raise DeployError(f"{folder} holds more than {max_files} files and folders")
        for name in [*folders, *names]:
            path = Path(root, name)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                files[path.relative_to(folder).as_posix()] = info
            elif not stat.S_ISDIR(info.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
                raise DeployError(f"{path} is {kind}; a version holds regular files only")
    return files


def _manifest(folder: Path) -> bytes:
    lines = sorted((name.encode(), file_digest(folder / name)) for name in _folder_files(folder))
    return b"".join(f"{sha}  ".encode() + name + b"\n" for name, sha in lines)


def _copy_folder(source: Path, target: Path, max_bytes: int, max_files: int) -> None:
    """Copy a version folder's files, at most ``max_bytes`` in all, whatever sizes they claim."""
    target.mkdir(parents=True, exist_ok=True)
    left = max_bytes
    for name in _folder_files(source, max_files):  # it may have grown since it was checked
        copy = target / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        with (source / name).open("rb") as reading, copy.open("wb") as writing:
            while chunk := reading.read(min(_CHUNK, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise DeployError(f"{source} holds more than {max_bytes} bytes")
                writing.write(chunk)


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
    _local_kind(path, limits.max_bytes, limits.max_files)  # before anything reads it
    yield path


def _download(url: str, target: Path, limits: DeployLimits) -> None:
    """Stream ``url`` into ``target``, following redirects, all within ``limits.timeout``."""
    try:
        with (
            httpcore.ConnectionPool(network_backend=DeadlineBackend()) as pool,
            deadline(limits.timeout),
        ):
            for _ in range(_MAX_REDIRECTS + 1):
                with pool.stream("GET", url, extensions={"timeout": _timeouts(limits)}) as response:
                    location = next(
                        (v for k, v in response.headers if k.lower() == b"location"), None
                    )
                    if response.status in _REDIRECT_STATUSES and location is not None:
                        url = urllib.parse.urljoin(url, location.decode("latin-1"))
                        continue
                    if response.status != 200:
                        raise DeployError(f"cannot fetch {url}: HTTP {response.status}")
                    _save(response, target, url, limits.max_bytes)
                    return
            raise DeployError(f"cannot fetch {url}: more than {_MAX_REDIRECTS} redirects")
    except DeadlinePassed as exc:
        raise DeployError(f"fetching {url} took longer than {limits.timeout:.0f} s") from exc
    except (
        httpcore.TimeoutException,
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,  # e.g. a redirect to file://
    ) as exc:
        raise DeployError(f"cannot fetch {url}: {exc or type(exc).__name__}") from exc


def _timeouts(limits: DeployLimits) -> dict[str, float]:
    read = limits.read_timeout
    return {"connect": limits.connect_timeout, "read": read, "write": read, "pool": read}


def _save(response: httpcore.Response, target: Path, url: str, max_bytes: int) -> None:
    size = 0
    with target.open("wb") as out:
        for chunk in response.iter_stream():
            size += len(chunk)
            if size > max_bytes:
                raise DeployError(f"{url} is larger than {max_bytes} bytes")
            out.write(chunk)


def unpack(
    archive: Path, target: Path, max_bytes: int, max_files: int = DeployLimits.max_files
) -> None:
    """Extract a .tar(.gz) or .zip archive into ``target``, refusing anything unsafe."""
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, target, max_bytes, max_files)
    else:
        _unpack_tar(archive, target, max_bytes, max_files)
    entries = list(target.iterdir())
    if not (target / METADATA_FILE).exists() and len(entries) == 1 and entries[0].is_dir():
        inner = entries[0].rename(target / f".unpacked-{time.monotonic_ns()}")
        for child in inner.iterdir():
            child.rename(target / child.name)
        inner.rmdir()


def _check_member(name: str) -> None:
    path = PurePosixPath(name)
    if len(name.encode(errors="replace")) > _MAX_NAME:
        raise DeployError(f"archive member name {name[:100]!r}… is longer than {_MAX_NAME} bytes")
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise DeployError(f"unsafe path {name!r} in archive")


def _unpack_tar(archive: Path, target: Path, max_bytes: int, max_files: int) -> None:
    # The stream never goes past the data allowed plus a generous header for each member.
    end = max_bytes + (max_files + 1) * (_MAX_TAR_READ + tarfile.BLOCKSIZE)
    try:
        with ExitStack() as stack:
            stream = _TarStream(stack.enter_context(_decompressed(archive)), end)
            # The stub wants write() and close() too, which reading needs neither of.
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r:"))  # type: ignore[call-overload]
            members: list[tarfile.TarInfo] = []
            size = 0
            # Each member is checked before the next header is read, which skips its data:
            # a header claiming a terabyte is refused without decompressing any of it.
            while (member := tar.next()) is not None:
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise DeployError(f"archive member {member.name!r} is not a file or folder")
                size += member.size
                if size > max_bytes:
                    raise DeployError(f"{archive.name} unpacks to more than {max_bytes} bytes")
                members.append(member)
                if len(members) > max_files:
                    raise DeployError(f"{archive.name} holds more than {max_files} files")
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, lzma.LZMAError) as exc:
        raise DeployError(f"not a readable .tar.gz or .zip archive: {exc}") from exc


@contextmanager
def _decompressed(archive: Path) -> Iterator[io.BufferedIOBase]:
    """The archive's bytes, decompressed as they are read if they are gzip, bzip2 or xz."""
    with archive.open("rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        opener = next((o for prefix, o in _DECOMPRESSORS if magic.startswith(prefix)), None)
        if opener is None:
            yield raw
            return
        with opener(raw) as stream:
            yield stream


class _TarStream:
    """A tar stream for ``tarfile`` with the bounds it lacks: no single read larger than
    ``_MAX_TAR_READ`` (a header claiming a gigabyte-long name would be read into memory
    whole) and no reading or skipping past ``end`` (endless headers, a bomb's data)."""

    def __init__(self, stream: io.BufferedIOBase, end: int) -> None:
        self._stream, self._end = stream, end

    def read(self, size: int = -1) -> bytes:
        if not 0 <= size <= _MAX_TAR_READ:
            raise DeployError(f"a tar header asks to read {size} bytes at once")
        data = self._stream.read(size)
        self._check(self._stream.tell())
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._check(offset)  # before decompressing up to it
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def _check(self, position: int) -> None:
        if position > self._end:
            raise DeployError(f"a tar stream longer than {self._end} bytes")


def _unpack_zip(archive: Path, target: Path, max_bytes: int, max_files: int) -> None:
    try:
        _check_zip_directory(archive, max_files)
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            if len(infos) > max_files:
                raise DeployError(f"{archive.name} holds more than {max_files} files")
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


def _check_zip_directory(archive: Path, max_files: int) -> None:
    """Refuse a zip whose central directory is larger than ``max_files`` entries take,
    from its end record, before ``zipfile`` reads it: 200,000 empty entries (a 10 MB zip)
    took 87 MB of objects before their count was checked, and a 4 GiB one would have
    taken tens of gigabytes.  A malformed end is left to ``zipfile`` to report."""
    with archive.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - 22 - 0xFFFF))  # the end record, its comment at most 64 KiB
        tail = file.read()
    end = tail.rfind(_ZIP_END)
    if end < 0 or len(tail) - end < 22:
        return
    # The directory's size; zip64's mark for 4 GiB or more (0xFFFFFFFF) is past any bound.
    (directory,) = struct.unpack_from("<I", tail, end + 12)
    if directory > max_files * _ZIP_ENTRY_BYTES:
        raise DeployError(
            f"{archive.name}'s index is {directory} bytes, more than {max_files} files take"
        )


def check_model(version_dir: Path, limits: DeployLimits) -> None:
    """Refuse a folder that the registry could not serve: bad metadata, ONNX, or labels.

    The model is loaded and run once in a child process bounded in memory and time: a
    200-byte graph can ask for gigabytes at its first run (a ConstantOfShape of
    [30000, 30000] took 3.6 GB), or run for ever, and neither may reach the server.
    """
    command = [sys.executable, "-m", "streaminfer.models.model_check", str(version_dir)]
    command += [str(limits.check_memory), str(os.getpid())]
    try:
        checked = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=limits.check_timeout
        )
    except subprocess.TimeoutExpired as exc:  # the child is killed
        took = f"loading and running it once took longer than {limits.check_timeout:.0f} s"
        raise DeployError(f"not a valid model: {took}") from exc
    if checked.returncode < 0:  # e.g. a native allocation failure that aborted it
        raise DeployError(
            f"not a valid model: its check died ({signal.Signals(-checked.returncode).name}); "
            f"it may need {more_memory_than(limits.check_memory)}"
        )
    if checked.returncode != 0:
        lines = checked.stderr.strip().splitlines() or ["its check failed"]
        raise DeployError(lines[-1][:400])


def more_memory_than(check_memory: int) -> str:
    """What a check that ran out of its memory needs, naming the setting that gives it."""
    return f"more than {check_memory // _MB} MiB of memory (check_memory_mb in [deploy])"


def check_model_here(version_dir: Path) -> None:
    """:func:`check_model` in this process, unbounded: for the child that does the check."""
    try:
        metadata = ModelMetadata.read(version_dir)
        OnnxModel(version_dir, metadata, RuntimeOptions(intra_op_threads=1)).warm_up()
        metadata.labels(version_dir)
    except MemoryError:  # the bound's doing, not the model's fault alone: said as such
        raise
    except Exception as exc:  # ORT and file errors alike: the version is not servable
        text = " ".join(str(exc).replace(f"{version_dir}/", "").split()) or type(exc).__name__
        raise DeployError(f"not a valid model: {text[:300]}") from exc


def prepare(location: str, sha256: str | None, target: Path, limits: DeployLimits) -> str:
    """Fill the empty folder ``target`` with the checked version; returns its digest.

    With ``sha256`` given, a different digest is refused; without, it is computed.
    """
    with fetched(location, limits) as source:
        if source.is_dir():
            _copy_folder(source, target, limits.max_bytes, limits.max_files)
            actual = digest(target)  # of the copy: what was checked is what is installed
        else:
            actual = file_digest(source)
            if sha256 is None or actual == sha256:
                unpack(source, target, limits.max_bytes, limits.max_files)
    if sha256 is not None and actual != sha256:
        raise DeployError(f"digest mismatch for {location}: expected {sha256}, got {actual}")
    check_model(target, limits)
    return actual


def install_version(
    model_dir: Path, version: int, location: str, sha256: str, limits: DeployLimits
) -> Path:
    """Fetch, verify and check a version, then rename it into ``model_dir/<version>``."""

    def fill(target: Path) -> None:
        prepare(location, sha256, target, limits)

    return write_version_atomically(model_dir, version, fill)

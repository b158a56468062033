"""Tensor data in protobuf messages, written and read without protobuf's copies.

protobuf copies a ``bytes`` field's value into the message when it is set, again when
the message is serialized, and again into a new ``bytes`` when it is read back: for a
request of 16 images as float32 (9.6 MB) the client spent 28 ms building it and the
server 13 ms reading it.  Here the rest of the message goes through protobuf, which is
small, and the tensor data is written straight after it, or read as views of the wire
bytes.  Fields may come in any order on the wire, and a repeated field's entries add up
wherever they are, so the message is the one protobuf itself would write or read.

A packed ``repeated float`` or ``double`` is read as views too: on the wire it is the
values' little-endian bytes, which protobuf would make into a list whose every value
becomes a Python float when read (a 64-image ``float_val`` took 20 ms to parse and 300
ms to read into an array).  Packed integers and bools are varints, a byte for a small
value: protobuf made 8 bytes of each before anything could count them (57 MB of one-byte
``int64_val`` took it past 1 GB), then a Python int of each.  Here they are counted
first, so that a caller refuses more than its tensor's shape holds, and only then
decoded, by numpy, a block of bytes at a time.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

Buffer = bytes | memoryview
M = TypeVar("M", bound=Message)

_LENGTH_DELIMITED = 2
_MAP_KEY, _MAP_VALUE = 1, 2  # the fields of a protobuf map entry
_SKIPPED_WIDTHS = {1: 8, 5: 4}  # fixed64, fixed32
_FIXED: dict[int, np.dtype] = {  # packed as their little-endian bytes
    FieldDescriptor.TYPE_FLOAT: np.dtype("<f4"),
    FieldDescriptor.TYPE_DOUBLE: np.dtype("<f8"),
}
_VARINTS: dict[int, np.dtype] = {  # packed as varints, which protobuf cuts to the type's bits
    FieldDescriptor.TYPE_INT32: np.dtype(np.int32),
    FieldDescriptor.TYPE_INT64: np.dtype(np.int64),
    FieldDescriptor.TYPE_UINT32: np.dtype(np.uint32),
    FieldDescriptor.TYPE_UINT64: np.dtype(np.uint64),
    FieldDescriptor.TYPE_BOOL: np.dtype(np.bool_),
}
_MOST_VARINT_BYTES = 10
_VARINT_BLOCK = 1 << 14
"""Bytes of varints looked at at once.  Their working arrays (8 bytes a value, a few of
them) then stay under the 128 KiB that glibc hands back to the system when freed: made
anew for each of a request's 1 MiB blocks, they cost page faults that tripled the time."""
_MOST_FIELDS = 1024
"""Fields a walk steps over.  A message of more at its top level (inputs, outputs,
parameters: a model has a few) is refused unread, as protobuf would make an object of
each: 5 million empty ``outputs`` (10 MB) took 255 MB.  A tensor of more (its
``string_val``) is read by protobuf: walking 15 million took 54 s and 5 GB."""


MOST_READ_WHOLE = 16 << 20
"""The largest request protobuf reads whole, where the walk cannot take its tensors apart
(a tensor of more than ``_MOST_FIELDS`` fields: its ``string_val``, or numbers written a
field each).  protobuf makes 8 to 16 bytes of every value, and twice that while a list
grows: 57 MB of empty strings took it past 1 GB, of unpacked one-byte int64 to 480 MB."""


class Unread(DecodeError):
    """A message refused before protobuf reads it, past a bound of the server's: valid
    protobuf, maybe, but not a request to read."""


class TooManyFields(Unread):
    """A message with more than ``_MOST_FIELDS`` fields at its top level."""


class TooLargeToReadWhole(Unread):
    """A message past ``MOST_READ_WHOLE`` that only protobuf could read."""

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the message ({size / 2**20:.1f} MiB) cannot be taken apart: it is not a valid "
            f"message of this method, or has a tensor of more than {_MOST_FIELDS} fields "
            "(strings, or numbers not packed); protobuf reads such a message whole up to "
            f"{MOST_READ_WHOLE >> 20} MiB only: send numbers packed or as raw contents, or "
            "fewer strings a request"
        )


def with_bytes_field(message: Message, number: int, values: Sequence[Buffer]) -> bytes:
    """``message`` serialized, followed by ``values`` as entries of its field ``number``
    (a ``repeated bytes`` field the message itself leaves empty). One copy of each value."""
    parts: list[Buffer] = [message.SerializeToString()]
    for value in values:
        parts += length_delimited(number, [value])
    return b"".join(parts)


def length_delimited(number: int, value: Sequence[Buffer]) -> list[Buffer]:
    """Field ``number`` (bytes, a string or a message) holding ``value``'s parts joined: the
    parts to join, so that a message can nest its fields without copying them."""
    size = sum(memoryview(part).nbytes for part in value)
    return [_varint(number << 3 | _LENGTH_DELIMITED), _varint(size), *value]


def map_entry(key: str, value: Sequence[Buffer]) -> list[Buffer]:
    """An entry of a ``map<string, message>`` field, its value given as parts."""
    return [*length_delimited(_MAP_KEY, [key.encode()]), *length_delimited(_MAP_VALUE, value)]


def check_field_count(data: bytes) -> None:
    """``TooManyFields`` if the message ``data`` holds has more than ``_MOST_FIELDS`` at its
    top level (4 million ``metadata_field`` made a metadata request of 57 MB that took
    protobuf 570 MB); anything else is protobuf's to judge."""
    _fields(memoryview(data))


def split_tensor_data(
    data: bytes,
    message_type: type[M],
    raw_number: int,
    tensors_number: int,
    numbers: Collection[int],
    most_whole: int | None = None,
) -> tuple[M, list[Buffer], list[Taken]]:
    """The message ``data`` holds without its ``repeated bytes`` field ``raw_number`` nor
    the fields ``numbers`` of the ``contents`` of its repeated tensors (field
    ``tensors_number``, a V2 request's inputs or an answer's outputs); the first's entries
    as views of ``data``, in order, and the others' as views too, a ``Taken`` a tensor.

    A field's extent is read from its key, and every field but those is handed to
    protobuf, which checks them.  What this walk cannot step over (a group, a truncated
    field), a tensor of more than ``_MOST_FIELDS`` fields, or a repeated number written
    unpacked (a field a value) or cut short sends the whole message to protobuf, so a
    malformed one fails with protobuf's own ``DecodeError``.  More than ``_MOST_FIELDS``
    fields at the top level: ``TooManyFields``; a message for protobuf of more than
    ``most_whole`` bytes: ``TooLargeToReadWhole``.
    """
    tensor_type = message_type.DESCRIPTOR.fields_by_number[tensors_number].message_type
    assert tensor_type is not None  # a repeated message field
    contents = tensor_type.fields_by_name["contents"]
    fields = _described(contents.message_type, numbers)
    split = _split_tensors(memoryview(data), raw_number, (tensors_number, contents.number), fields)
    if split is None:
        message = _read_whole(data, message_type, most_whole)
        by_number = message_type.DESCRIPTOR.fields_by_number
        raw: list[Buffer] = list(getattr(message, by_number[raw_number].name))
        message.ClearField(by_number[raw_number].name)
        taken = [  # reached through, an absent ``contents`` would become present
            _taken_from(tensor.contents, fields) if tensor.HasField("contents") else {}
            for tensor in getattr(message, by_number[tensors_number].name)
        ]
        return message, raw, taken
    rest, raw, taken = split
    return message_type.FromString(b"".join(rest)), raw, taken


def _split_tensors(
    view: memoryview, raw_number: int, path: tuple[int, int], fields: Fields
) -> tuple[list[Buffer], list[Buffer], list[Taken]] | None:
    """The message's fields but ``raw_number``, each tensor (``path``: its field, and its
    contents' field) written again without ``fields``; the entries of ``raw_number``, and
    ``fields`` by tensor; None where the walk stops."""
    walked = _fields(view)
    if walked is None:
        return None
    rest: list[Buffer] = []
    raw: list[Buffer] = []
    taken: list[Taken] = []
    for key, start, value, stop in walked:
        if key == _key(raw_number):
            raw.append(view[value:stop])
        elif key == _key(path[0]):
            tensor = _take(view[value:stop], path[1:], fields)
            if tensor is None:
                return None
            parts, found = tensor
            joined = _joined(found, fields)
            if joined is None:
                return None
            rest += length_delimited(path[0], parts)
            taken.append(joined)
        else:
            rest.append(view[start:stop])
    return rest, raw, taken


def split_map_bytes(
    data: bytes,
    message_type: type[M],
    map_number: int,
    numbers: Collection[int],
    most_whole: int | None = None,
) -> tuple[M, dict[str, Taken]]:
    """The message ``data`` holds without the fields ``numbers`` of the values of its
    ``map<string, message>`` field ``map_number``, and those fields as views of ``data``,
    by map key (where one is not empty).  Each is a ``bytes`` field or a repeated
    ``float`` or ``double``.

    Map entries are walked as ``split_tensor_data`` walks a message, and written again
    without those fields; protobuf's rules stay: an entry's last key and last ``bytes``
    field win, a packed field's occurrences add up, and an entry replaces an earlier one
    of its key.  The whole message goes to protobuf where an entry has any other field
    (protobuf keeps it out of the map, as an unknown field of the message), a value has
    more than ``_MOST_FIELDS`` fields, or a repeated number is written unpacked (a field
    a value) or cut short (which protobuf refuses), within ``most_whole`` bytes.
    """
    entry_type = message_type.DESCRIPTOR.fields_by_number[map_number].message_type
    assert entry_type is not None  # a map field's entries are messages
    fields = _described(entry_type.fields_by_name["value"].message_type, numbers)
    split = _split_map(memoryview(data), map_number, fields)
    if split is None:
        message = _read_whole(data, message_type, most_whole)
        tensors = getattr(message, message_type.DESCRIPTOR.fields_by_number[map_number].name)
        taken = {name: _taken_from(value, fields) for name, value in tensors.items()}
        return message, {name: found for name, found in taken.items() if found}
    rest, taken = split
    return message_type.FromString(b"".join(rest)), taken


def _read_whole(data: bytes, message_type: type[M], most_bytes: int | None) -> M:
    if most_bytes is not None and len(data) > most_bytes:
        raise TooLargeToReadWhole(len(data))
    return message_type.FromString(data)


@dataclass(frozen=True)
class Packed:
    """A repeated number field's values: counted, and made an array only when asked
    (``array``), so that a caller can refuse more than it takes first."""

    dtype: np.dtype  # the field's own type (``int32`` for an ``int32`` field)
    count: int
    values: np.ndarray | None = None  # an array (fixed-width values: views of the wire)
    varints: Buffer | None = None  # or varints, whole
    held: Sequence[Any] | None = None  # or the numbers protobuf read

    def __len__(self) -> int:
        return self.count

    def array(self) -> np.ndarray:
        if self.values is not None:
            return self.values
        if self.varints is not None:
            return _decode_varints(self.varints, self.count, self.dtype)
        assert self.held is not None
        return np.fromiter(self.held, dtype=self.dtype, count=self.count)


Taken = dict[int, Buffer | Packed]
"""A message's fields read apart, by number: a ``bytes`` field's value, or a packed
field's values; only those not empty."""


def held_values(message: Message, number: int) -> Packed:
    """The repeated number field ``number`` of a message protobuf read."""
    field = message.DESCRIPTOR.fields_by_number[number]
    held = getattr(message, field.name)
    return Packed(_number_type(field), len(held), held=held)


@dataclass(frozen=True)
class _Field:
    name: str
    dtype: np.dtype | None  # of its packed values; None for a ``bytes`` field
    varint: bool = False


Fields = dict[int, _Field]
"""Fields taken out of a message, by number."""


def _described(message_type: Any, numbers: Collection[int]) -> Fields:
    """The fields ``numbers`` of ``message_type`` (a descriptor)."""
    fields: Fields = {}
    for number in numbers:
        field = message_type.fields_by_number[number]
        if field.type == FieldDescriptor.TYPE_BYTES:
            fields[number] = _Field(field.name, None)
        else:
            fields[number] = _Field(field.name, _number_type(field), field.type in _VARINTS)
    return fields


def _number_type(field: Any) -> np.dtype:
    return _VARINTS[field.type] if field.type in _VARINTS else _FIXED[field.type]


def _taken_from(message: Any, fields: Fields) -> Taken:
    """``fields`` taken out of a message protobuf read, as the walk gives them."""
    found: Taken = {}
    for number, field in fields.items():
        held = getattr(message, field.name)
        if len(held) and field.dtype is None:
            found[number] = held
        elif len(held):  # protobuf made them Python numbers, kept when cleared below
            found[number] = held_values(message, number)
        message.ClearField(field.name)
    return found


def _split_map(
    view: memoryview, map_number: int, fields: Fields
) -> tuple[list[Buffer], dict[str, Taken]] | None:
    """The message's fields, each map entry written again without its value's ``fields``,
    and those by key; None where the walk stops."""
    walked = _fields(view)
    if walked is None:
        return None
    rest: list[Buffer] = []
    taken: dict[str, Taken] = {}
    for key, start, value, stop in walked:
        if key != _key(map_number):
            rest.append(view[start:stop])
            continue
        entry = _map_entry(view[value:stop], fields)
        if entry is None:
            return None
        name, found, parts = entry
        rest += length_delimited(map_number, parts)
        taken.pop(name, None)
        if found:
            taken[name] = found
    return rest, taken


def _map_entry(view: memoryview, fields: Fields) -> tuple[str, Taken, list[Buffer]] | None:
    """A map entry's key, its value's ``fields``, and the entry's fields without them."""
    walked = _walked(view)
    if walked is None:
        return None
    name: Buffer = b""
    found: dict[int, list[Buffer]] = {}
    parts: list[Buffer] = []
    for key, start, value, stop in walked:
        if key == _key(_MAP_VALUE):
            tensor = _take(view[value:stop], (), fields)
            if tensor is None:
                return None
            kept, pieces = tensor
            parts += length_delimited(_MAP_VALUE, kept)
            _add_pieces(found, pieces)
        elif key == _key(_MAP_KEY):
            name = view[value:stop]
            parts.append(view[start:stop])
        else:
            return None  # protobuf keeps such an entry out of the map, as an unknown field
    joined = _joined(found, fields)
    if joined is None:
        return None
    # A key that is not UTF-8 fails protobuf's parse of the whole message later.
    return bytes(name).decode("utf-8", "replace"), joined, parts


def _take(
    view: memoryview, path: Sequence[int], fields: Fields
) -> tuple[list[Buffer], dict[int, list[Buffer]]] | None:
    """The message ``view`` holds without ``fields`` of the message at ``path`` (numbers of
    message fields, from this one down), as parts, and the pieces of those fields by
    number, in order; None where the walk stops."""
    walked = _walked(view)
    if walked is None:
        return None
    kept: list[Buffer] = []
    found: dict[int, list[Buffer]] = {}
    for key, start, value, stop in walked:
        if path and key == _key(path[0]):
            inner = _take(view[value:stop], path[1:], fields)
            if inner is None:
                return None
            parts, pieces = inner
            kept += length_delimited(path[0], parts)
            _add_pieces(found, pieces)
        elif not path and key >> 3 in fields:
            if key & 7 != _LENGTH_DELIMITED or not _whole(view[value:stop], fields[key >> 3]):
                return None  # numbers a field each, or cut short: protobuf's to read
            found.setdefault(key >> 3, []).append(view[value:stop])
        else:
            kept.append(view[start:stop])
    return kept, found


def _add_pieces(found: dict[int, list[Buffer]], pieces: dict[int, list[Buffer]]) -> None:
    """A merged message's pieces after the earlier ones, as protobuf adds them up."""
    for number, more in pieces.items():
        found.setdefault(number, []).extend(more)


def _walked(view: memoryview) -> list[tuple[int, int, int, int]] | None:
    """``_fields`` within a message: past ``_MOST_FIELDS`` (a tensor of many values, its
    ``string_val``), None, for protobuf to read."""
    try:
        return _fields(view)
    except TooManyFields:
        return None


def _whole(piece: memoryview, field: _Field) -> bool:
    """Whether a packed field's piece holds whole values (protobuf refuses it otherwise)."""
    if field.varint:
        return not piece or piece[-1] < 0x80
    return field.dtype is None or len(piece) % field.dtype.itemsize == 0


def _joined(found: dict[int, list[Buffer]], fields: Fields) -> Taken | None:
    """A ``bytes`` field's last value, a packed field's values together; none empty.
    None for varints protobuf refuses (one of more than 10 bytes)."""
    joined: Taken = {}
    for number, parts in found.items():
        field = fields[number]
        value = parts[-1] if field.dtype is None or len(parts) == 1 else b"".join(parts)
        if not len(value):
            continue
        if field.dtype is None:
            joined[number] = value
        elif not field.varint:
            values = np.frombuffer(value, dtype=field.dtype)
            joined[number] = Packed(field.dtype, len(values), values=values)
        else:
            count = _count_varints(value)
            if count is None:
                return None
            joined[number] = Packed(field.dtype, count, varints=value)
    return joined


def taken_bytes(read_apart: Taken, number: int) -> Buffer | None:
    """The ``bytes`` field ``number`` of ``read_apart``, if it was read apart."""
    value = read_apart.get(number)
    assert not isinstance(value, Packed), f"field {number} is no bytes field"
    return value


def taken_packed(read_apart: Taken, number: int) -> Packed | None:
    """The packed field ``number`` of ``read_apart``; None where it was not read apart."""
    value = read_apart.get(number)
    assert value is None or isinstance(value, Packed), f"field {number} is not packed"
    return value


def _count_varints(wire: Buffer) -> int | None:
    """How many varints ``wire`` holds; None if it does not end with a whole one, or one
    runs past 10 bytes (protobuf's limit)."""
    data = np.frombuffer(wire, dtype=np.uint8)
    if len(data) and data[-1] >= 0x80:
        return None
    count = 0
    for start in range(0, len(data), _VARINT_BLOCK):
        # Overlapping the next block by 9 bytes, so that a run across the cut is seen.
        going_on = data[start : start + _VARINT_BLOCK + _MOST_VARINT_BYTES - 1] >= 0x80
        count += min(_VARINT_BLOCK, len(data) - start) - int(
            np.count_nonzero(going_on[:_VARINT_BLOCK])
        )
        # Runs of 2, 4, 8, then 10 bytes that all go on: a varint of 11 bytes or more.
        for step in (1, 2, 4, 2):
            going_on = going_on[:-step] & going_on[step:]
        if going_on.any():
            return None
    return count


def _decode_varints(wire: Buffer, count: int, dtype: np.dtype) -> np.ndarray:
    """The ``count`` varints of ``wire`` (``_count_varints`` found them whole) as
    ``dtype``, cut to its bits as protobuf cuts them (a bool: whether not 0)."""
    data = np.frombuffer(wire, dtype=np.uint8)
    out = np.empty(count, dtype=dtype)
    start = done = 0
    while done < count:  # a block at a time, cut after the last varint that ends in it
        ends = np.flatnonzero(data[start : start + _VARINT_BLOCK] < 0x80)
        block = data[start : start + int(ends[-1]) + 1]
        values = _block_values(block, ends)
        if dtype.kind == "b":
            out[done : done + len(ends)] = values != 0
        else:  # numpy casts integers by keeping their low bits
            out[done : done + len(ends)] = values.view(np.int64 if dtype.kind == "i" else np.uint64)
        start += len(block)
        done += len(ends)
    return out


def _block_values(block: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The varints of ``block``, which ends with one, as 64-bit numbers."""
    if len(ends) == len(block):  # each a byte: below 128
        return block.astype(np.uint64)
    firsts = np.empty_like(ends)
    firsts[0] = 0
    firsts[1:] = ends[:-1] + 1
    extra = ends - firsts  # bytes after each one's first
    values = (block[firsts] & 0x7F).astype(np.uint64)
    for byte in range(1, int(extra.max()) + 1):
        longer = np.flatnonzero(extra >= byte)
        more = (block[firsts[longer] + byte] & 0x7F).astype(np.uint64)
        values[longer] |= more << np.uint64(7 * byte)  # the 10th byte's bit 63 only, as protobuf
    return values


def _key(number: int) -> int:
    """The key of a length-delimited field."""
    return number << 3 | _LENGTH_DELIMITED


def _fields(view: memoryview) -> list[tuple[int, int, int, int]] | None:
    """Each field of the message ``view`` holds, in order: (key, where it starts, where
    its value starts, where it ends); None if the walk cannot step over one.  Raises
    ``TooManyFields`` past ``_MOST_FIELDS``."""
    fields: list[tuple[int, int, int, int]] = []
    position = 0
    while position < len(view):
        if len(fields) == _MOST_FIELDS:
            raise TooManyFields(
                f"more than {_MOST_FIELDS} fields (inputs, outputs, parameters, ...) at the "
                "top level of the message"
            )
        field = _field_at(view, position)
        if field is None:
            return None
        key, value, stop = field
        fields.append((key, position, value, stop))
        position = stop
    return fields


def _field_at(view: memoryview, position: int) -> tuple[int, int, int] | None:
    """(key, where its value starts, where the field ends), or None where the walk stops."""
    read = _read_varint(view, position)
    if read is None:
        return None
    key, start = read
    wire_type = key & 7
    if wire_type == 0:
        value = _read_varint(view, start)
        return None if value is None else (key, start, value[1])
    if wire_type == _LENGTH_DELIMITED:
        length = _read_varint(view, start)
        if length is None or length[1] + length[0] > len(view):
            return None
        return key, length[1], length[1] + length[0]
    width = _SKIPPED_WIDTHS.get(wire_type)
    if width is None or start + width > len(view):
        return None  # a group (3, 4) or no wire type at all (6, 7)
    return key, start, start + width


def _read_varint(view: memoryview, position: int) -> tuple[int, int] | None:
    """(value, position after it), or None if the bytes end first or it runs past 10."""
    value = shift = 0
    for index in range(position, min(position + 10, len(view))):
        byte = view[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

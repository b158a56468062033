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
ms to read into an array).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, TypeVar

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

Buffer = bytes | memoryview
M = TypeVar("M", bound=Message)
Taken = dict[int, Buffer]
"""A message's fields read apart, by number: a ``bytes`` field's value, or a packed
field's values as their little-endian bytes; only those not empty."""

_LENGTH_DELIMITED = 2
_MAP_KEY, _MAP_VALUE = 1, 2  # the fields of a protobuf map entry
_SKIPPED_WIDTHS = {1: 8, 5: 4}  # fixed64, fixed32
_PACKED: dict[int, np.dtype] = {
    FieldDescriptor.TYPE_FLOAT: np.dtype("<f4"),
    FieldDescriptor.TYPE_DOUBLE: np.dtype("<f8"),
}
_MOST_FIELDS = 1024
"""Fields a walk steps over.  A message of more at its top level (inputs, outputs,
parameters: a model has a few) is refused unread, as protobuf would make an object of
each: 5 million empty ``outputs`` (10 MB) took 255 MB.  A tensor of more (its
``string_val``) is read by protobuf: walking 15 million took 54 s and 5 GB."""


class TooManyFields(DecodeError):
    """A message with more than ``_MOST_FIELDS`` fields at its top level."""


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
    fields at the top level: ``TooManyFields``.
    """
    tensor_type = message_type.DESCRIPTOR.fields_by_number[tensors_number].message_type
    assert tensor_type is not None  # a repeated message field
    contents = tensor_type.fields_by_name["contents"]
    fields = _described(contents.message_type, numbers)
    split = _split_tensors(memoryview(data), raw_number, (tensors_number, contents.number), fields)
    if split is None:
        message = message_type.FromString(data)
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
            rest += length_delimited(path[0], parts)
            taken.append(_joined(found, fields))
        else:
            rest.append(view[start:stop])
    return rest, raw, taken


def split_map_bytes(
    data: bytes, message_type: type[M], map_number: int, numbers: Collection[int]
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
    a value) or packed into bytes its width does not divide (which protobuf refuses).
    """
    entry_type = message_type.DESCRIPTOR.fields_by_number[map_number].message_type
    assert entry_type is not None  # a map field's entries are messages
    fields = _described(entry_type.fields_by_name["value"].message_type, numbers)
    split = _split_map(memoryview(data), map_number, fields)
    if split is None:
        message = message_type.FromString(data)
        tensors = getattr(message, message_type.DESCRIPTOR.fields_by_number[map_number].name)
        taken = {name: _taken_from(value, fields) for name, value in tensors.items()}
        return message, {name: found for name, found in taken.items() if found}
    rest, taken = split
    return message_type.FromString(b"".join(rest)), taken


Fields = dict[int, tuple[str, np.dtype | None]]
"""Fields taken out of a message, by number: each one's name, and the type of its packed
values (None for a ``bytes`` field)."""


def _described(message_type: Any, numbers: Collection[int]) -> Fields:
    """The fields ``numbers`` of ``message_type`` (a descriptor)."""
    fields: Fields = {}
    for number in numbers:
        field = message_type.fields_by_number[number]
        packed = None if field.type == FieldDescriptor.TYPE_BYTES else _PACKED[field.type]
        fields[number] = field.name, packed
    return fields


def _taken_from(message: Any, fields: Fields) -> Taken:
    """``fields`` taken out of a message protobuf read, as the walk gives them."""
    found: Taken = {}
    for number, (name, packed) in fields.items():
        held = getattr(message, name)
        if len(held) and packed is None:
            found[number] = held
        elif len(held):  # protobuf made them Python numbers
            found[number] = np.fromiter(held, dtype=packed, count=len(held)).data.cast("B")
        message.ClearField(name)
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
    # A key that is not UTF-8 fails protobuf's parse of the whole message later.
    return bytes(name).decode("utf-8", "replace"), _joined(found, fields), parts


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
            packed = fields[key >> 3][1]
            width = 1 if packed is None else packed.itemsize
            if key & 7 != _LENGTH_DELIMITED or (stop - value) % width:
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


def _joined(found: dict[int, list[Buffer]], fields: Fields) -> Taken:
    """A ``bytes`` field's last value, a packed field's values together; none empty."""
    joined: Taken = {}
    for number, parts in found.items():
        last_or_all = fields[number][1] is None or len(parts) == 1
        value = parts[-1] if last_or_all else b"".join(parts)
        if len(value):
            joined[number] = value
    return joined


def packed_array(read_apart: Taken, number: int | None, dtype: np.dtype) -> np.ndarray | None:
    """The packed field ``number`` of ``read_apart``, as an array of ``dtype`` (a view of
    its bytes); None where that field was not read apart (or ``number`` is None)."""
    packed = None if number is None else read_apart.get(number)
    return None if packed is None else np.frombuffer(packed, dtype=dtype.newbyteorder("<"))


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

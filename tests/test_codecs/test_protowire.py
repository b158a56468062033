"""Tensor data written and read around protobuf reads as protobuf reads it.

The reference is protobuf itself: whatever bytes arrive (valid, merged from several
messages in any order, mutated or random), ``parse_infer_request``,
``parse_predict_request`` and their answers' counterparts either give the message and
tensor data protobuf gives, or fail where protobuf fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given
from hypothesis import strategies as st

from streaminfer.codecs.protowire import (
    Packed,
    TooManyFields,
    length_delimited,
    with_bytes_field,
)
from streaminfer.codecs.raw import raw_buffer, to_raw
from streaminfer.codecs.tfserving import parse_predict_request, parse_predict_response
from streaminfer.codecs.v2 import (
    infer_request_bytes,
    parse_infer_request,
    parse_infer_response,
    read_grpc_tensors,
)
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.tfserving import predict_pb2, tensor_pb2, types_pb2
from tests.test_codecs.strategies import arrays, assert_same

M = TypeVar("M", bound=Message)
RAW = v2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
texts = st.text(max_size=6)


def described(tensor_type: Any) -> st.SearchStrategy[list[Any]]:
    """Up to two tensors (name, datatype, shape, some typed contents) of a V2 request or
    answer."""
    datatypes = st.sampled_from(["FP32", "BYTES", "INT64"])
    shapes = st.lists(st.integers(-1, 2**40), max_size=3)
    contents = st.builds(
        v2.InferTensorContents,
        bool_contents=st.lists(st.booleans(), max_size=2),
        int_contents=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2),
        int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
        uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=2),
        uint64_contents=st.lists(st.integers(0, 2**64 - 1), max_size=2),
        fp32_contents=st.lists(st.floats(width=32), max_size=3),
        fp64_contents=st.lists(st.floats(), max_size=2),
    )
    tensor = st.builds(tensor_type, name=texts, datatype=datatypes, shape=shapes, contents=contents)
    return st.lists(tensor, max_size=2)


@st.composite
def request_parts(draw: st.DrawFn) -> list[v2.ModelInferRequest]:
    """Partial requests: serialized one after the other, they make one request."""
    partial = st.builds(
        v2.ModelInferRequest,
        model_name=texts,
        id=texts,
        inputs=described(v2.ModelInferRequest.InferInputTensor),
        outputs=st.lists(st.builds(v2.ModelInferRequest.InferRequestedOutputTensor, name=texts)),
        raw_input_contents=st.lists(st.binary(max_size=300), max_size=3),
    )
    parts = draw(st.lists(partial, min_size=1, max_size=4))
    for part in parts:
        if draw(st.booleans()):
            part.parameters["top_k"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    return parts


def protobuf_reading(data: bytes, message_type: type[M], parse: Callable[[bytes], Any]) -> M | None:
    """protobuf's reading of ``data``; None, once ``parse`` failed alike, where it fails."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            parse(data)
        return None


# The fields read apart, by number: None for bytes, else the dtype of the numbers.
TF_FIELDS = {  # TensorProto's tensor_content, then float_val ... uint64_val
    4: None,
    5: "<f4",
    6: "<f8",
    7: "i4",
    10: "i8",
    11: "?",
    13: "i4",
    16: "u4",
    17: "u8",
}
V2_FIELDS = {1: "?", 2: "i4", 3: "i8", 4: "u4", 5: "u8", 6: "<f4", 7: "<f8"}  # *_contents
Fields = dict[int, Any]  # bytes, or the numbers as an array


def taken_from(message: Any, numbers: dict[int, str | None]) -> Fields:
    """The fields ``numbers`` protobuf read in ``message``, where not empty, taken out of it."""
    found = {}
    for number, dtype in numbers.items():
        name = message.DESCRIPTOR.fields_by_number[number].name
        values = getattr(message, name)
        if len(values):
            found[number] = values if dtype is None else np.array(values, dtype)
        message.ClearField(name)
    return found


def as_read(taken: dict[Any, Any], numbers: dict[int, str | None]) -> dict[Any, Fields]:
    """Our fields read apart, by key, as ``taken_from`` gives protobuf's."""
    read: dict[Any, Fields] = {}
    for key, fields in taken.items():
        read[key] = {}
        for number, value in fields.items():
            if numbers[number] is None:
                read[key][number] = bytes(value)
            else:
                read[key][number] = value.array()
                assert value.array().dtype == numbers[number]
    return read


def assert_same_fields(ours: dict[Any, Fields], protobufs: dict[Any, Fields]) -> None:
    assert {key: sorted(fields) for key, fields in ours.items()} == {
        key: sorted(fields) for key, fields in protobufs.items()
    }
    for key, fields in ours.items():
        for number, value in fields.items():
            if isinstance(value, bytes):
                assert value == protobufs[key][number]
            else:  # NaN as NaN, whatever its bits (protobuf's went through a Python float)
                np.testing.assert_array_equal(value, protobufs[key][number])


def raw_entries(raw: str, tensors: str) -> Callable[[Any], tuple[list[bytes], dict[int, Fields]]]:
    """A V2 message's ``raw`` field of tensor data, and the packed float contents of its
    ``tensors``, by index, taken out of it."""

    def take(message: Any) -> tuple[list[bytes], dict[int, Fields]]:
        entries = list(getattr(message, raw))
        message.ClearField(raw)
        contents = {  # reached through, an absent ``contents`` would become present
            index: taken_from(tensor.contents, V2_FIELDS) if tensor.HasField("contents") else {}
            for index, tensor in enumerate(getattr(message, tensors))
        }
        return entries, contents

    return take


def map_contents(field: str) -> Callable[[Any], dict[str, Fields]]:
    """What a TF Serving message's map ``field`` holds as ``tensor_content``, ``float_val``
    and ``double_val``, by key (where one is not empty), taken out of its tensors."""

    def take(message: Any) -> dict[str, Fields]:
        taken = {key: taken_from(t, TF_FIELDS) for key, t in getattr(message, field).items()}
        return {key: found for key, found in taken.items() if found}

    return take


# Each message: its type, our reading of it, and protobuf's reading of its tensor data.
Reader = tuple[type[Message], Callable[[bytes], Any], Callable[[Any], Any]]
V2_REQUEST: Reader = (
    v2.ModelInferRequest,
    parse_infer_request,
    raw_entries("raw_input_contents", "inputs"),
)
V2_ANSWER: Reader = (
    v2.ModelInferResponse,
    parse_infer_response,
    raw_entries("raw_output_contents", "outputs"),
)
TF_REQUEST: Reader = (predict_pb2.PredictRequest, parse_predict_request, map_contents("inputs"))
TF_ANSWER: Reader = (predict_pb2.PredictResponse, parse_predict_response, map_contents("outputs"))


def assert_read_as_protobuf_reads(data: bytes, reader: Reader) -> None:
    """Our reading of ``data`` gives protobuf's message and tensor data, or fails alike."""
    message_type, parse, take = reader
    expected = protobuf_reading(data, message_type, parse)
    if expected is None:
        return
    if message_type in (predict_pb2.PredictRequest, predict_pb2.PredictResponse):
        message, taken = parse(data)
        assert_same_fields(as_read(taken, TF_FIELDS), take(expected))
    else:
        message, raw, contents = parse(data)
        expected_raw, expected_contents = take(expected)
        assert [bytes(entry) for entry in raw] == expected_raw
        assert_same_fields(as_read(dict(enumerate(contents)), V2_FIELDS), expected_contents)
    assert message == expected


@given(request_parts())
def test_requests_merged_from_parts_in_any_order(parts: list[v2.ModelInferRequest]) -> None:
    assert_read_as_protobuf_reads(b"".join(part.SerializeToString() for part in parts), V2_REQUEST)


@given(
    request_parts(),
    st.lists(st.floats(width=32), max_size=3),
    st.sampled_from(["", "packed", "unpacked"]),
)
def test_requests_with_contents_in_pieces(
    parts: list[v2.ModelInferRequest], more: list[float], way: str
) -> None:
    """An input whose ``contents`` come twice, ``fp32_contents`` packed again or a field a
    value: protobuf merges them, and so does our reading (or leaves it to protobuf)."""
    wire = b"".join(part.SerializeToString() for part in parts)
    values = np.array(more, dtype="<f4").tobytes()
    if way == "packed":
        contents = field(6, values)
    else:
        contents = b"".join(
            bytes([6 << 3 | 5]) + values[at : at + 4] for at in range(0, len(values), 4)
        )
    tensor = (
        field(1, b"x") + field(5, field(6, np.array([1.5], "<f4").tobytes())) + field(5, contents)
    )
    assert_read_as_protobuf_reads(wire + field(5, tensor), V2_REQUEST)


def mutated(wire: bytes, data: st.DataObject) -> bytes:
    """``wire`` with a few bytes set, cut off or inserted."""
    changed = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        if not changed:
            break
        at = data.draw(st.integers(0, len(changed) - 1))
        action = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if action == "set":
            changed[at] = data.draw(st.sampled_from([0x00, 0x12, 0x22, 0x3A, 0x7F, 0x80, 0xFF]))
        elif action == "cut":
            del changed[at:]
        else:
            changed[at:at] = data.draw(st.binary(min_size=1, max_size=11))
    return bytes(changed)


@given(request_parts(), st.data())
def test_mutated_requests(parts: list[v2.ModelInferRequest], data: st.DataObject) -> None:
    wire = b"".join(part.SerializeToString() for part in parts)
    assert_read_as_protobuf_reads(mutated(wire, data), V2_REQUEST)


@given(
    st.builds(
        v2.ModelInferResponse,
        model_name=texts,
        id=texts,
        outputs=described(v2.ModelInferResponse.InferOutputTensor),
        raw_output_contents=st.lists(st.binary(max_size=300), max_size=3),
    ),
    st.data(),
)
def test_mutated_answers(response: v2.ModelInferResponse, data: st.DataObject) -> None:
    assert_read_as_protobuf_reads(mutated(response.SerializeToString(), data), V2_ANSWER)


@given(st.binary(max_size=64))
def test_arbitrary_bytes(wire: bytes) -> None:
    assert_read_as_protobuf_reads(wire, V2_REQUEST)
    assert_read_as_protobuf_reads(wire, V2_ANSWER)


def test_the_raw_contents_are_views_of_the_received_bytes() -> None:
    request = v2.ModelInferRequest(model_name="m", raw_input_contents=[b"x" * 1000])
    data = request.SerializeToString()
    message, raw, _ = parse_infer_request(data)
    assert message.model_name == "m" and isinstance(raw[0], memoryview)
    assert raw[0].obj is data


def test_typed_contents_are_read_apart_and_counted() -> None:
    """Packed float contents are views of the received bytes, packed integers are counted
    but not read; written a field a value, protobuf reads them."""
    request = v2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.extend(
        [1.0, 2.0, 3.0]
    )
    request.inputs.add(name="y", datatype="FP64", shape=[1]).contents.fp64_contents.append(0.5)
    request.inputs.add(name="z", datatype="INT64", shape=[2]).contents.int64_contents.extend(
        [7, -1]
    )
    request.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a")
    data = request.SerializeToString()
    message, raw, contents = parse_infer_request(data)
    floats, ints = contents[0][6], contents[2][3]
    assert raw == [] and isinstance(floats, Packed) and isinstance(ints, Packed)
    assert floats.values is not None and floats.values.base.obj is data
    assert ints.values is None and isinstance(ints.varints, memoryview) and ints.varints.obj is data
    assert len(ints) == 2 and ints.array().tolist() == [7, -1]
    assert [sorted(found) for found in contents] == [[6], [7], [3], []]
    assert (contents[1][7].array() == [0.5]).all()
    assert list(message.inputs[3].contents.bytes_contents) == [b"a"]  # left to protobuf
    tensors = read_grpc_tensors(message.inputs, raw, "input", contents)
    assert tensors["x"].tolist() == [1.0, 2.0, 3.0] and tensors["z"].tolist() == [7, -1]
    unpacked = field(5, field(1, b"w") + field(5, bytes([6 << 3 | 5]) + b"\0\0\0\0"))
    message, raw, contents = parse_infer_request(data + unpacked)
    assert contents[4][6].held is not None  # protobuf read them, as Python numbers
    assert contents[4][6].array().tolist() == [0.0]


def test_a_group_is_left_to_protobuf() -> None:
    """Wire types the walk does not follow (a group of field 15) still read as protobuf reads."""
    group = bytes([15 << 3 | 3, 8, 1, 15 << 3 | 4])
    data = group + v2.ModelInferRequest(raw_input_contents=[b"abc"]).SerializeToString()
    assert_read_as_protobuf_reads(data, V2_REQUEST)
    assert [bytes(entry) for entry in parse_infer_request(data)[1]] == [b"abc"]


@given(st.dictionaries(st.text(min_size=1, max_size=6), arrays(), min_size=1, max_size=3))
def test_requests_written_with_their_tensors(tensors: dict[str, np.ndarray]) -> None:
    request = v2.ModelInferRequest(model_name="m", model_version="2")
    wire = infer_request_bytes(request, tensors)
    parsed = v2.ModelInferRequest.FromString(wire)  # protobuf reads what we wrote
    assert parsed.model_name == "m" and [i.name for i in parsed.inputs] == list(tensors)
    back = read_grpc_tensors(parsed.inputs, parsed.raw_input_contents, "input")
    for name, array in tensors.items():
        assert_same(back[name], array)


@given(arrays(), st.sampled_from(["C", "F"]), st.booleans())
def test_raw_buffer_is_the_raw_form(array: np.ndarray, order: str, swapped: bool) -> None:
    if swapped and array.dtype.kind not in "OSb":
        array = array.astype(array.dtype.newbyteorder("S"))
    array = np.asarray(array, order=order)  # type: ignore[call-overload]
    assert bytes(raw_buffer(array)) == to_raw(array)


def test_with_bytes_field_writes_length_delimited_entries() -> None:
    big = b"\x01" * 300  # a length of two varint bytes
    wire = with_bytes_field(v2.ModelInferRequest(id="a"), RAW, [b"", big, memoryview(b"xy")])
    assert list(v2.ModelInferRequest.FromString(wire).raw_input_contents) == [b"", big, b"xy"]
    message, entries, _ = parse_infer_request(wire)
    assert message.id == "a" and [bytes(e) for e in entries] == [b"", big, b"xy"]


# -- TF Serving's PredictRequest: tensor_content inside the values of the inputs map --------
INPUTS = predict_pb2.PredictRequest.DESCRIPTOR.fields_by_name["inputs"].number
keys = st.sampled_from(["a", "b", "é"])  # few, so that entries share keys


@st.composite
def tensor_protos(draw: st.DrawFn) -> tensor_pb2.TensorProto:
    int32s = st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2)
    tensor = tensor_pb2.TensorProto(
        dtype=draw(st.sampled_from([types_pb2.DT_FLOAT, types_pb2.DT_STRING])),
        tensor_content=draw(st.binary(max_size=40)),
        float_val=draw(st.lists(st.floats(width=32), max_size=3)),
        double_val=draw(st.lists(st.floats(), max_size=2)),
        int_val=draw(int32s),
        half_val=draw(int32s),
        int64_val=draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2)),
        bool_val=draw(st.lists(st.booleans(), max_size=2)),
        uint32_val=draw(st.lists(st.integers(0, 2**32 - 1), max_size=2)),
        uint64_val=draw(st.lists(st.integers(0, 2**64 - 1), max_size=2)),
    )
    tensor.tensor_shape.dim.add(size=draw(st.integers(-1, 9)))
    return tensor


@st.composite
def tensor_wire(draw: st.DrawFn) -> bytes:
    """A TensorProto's bytes: as protobuf writes it, or with more ``float_val`` or
    ``int64_val`` after it, packed again or a field a value (protobuf reads both, and adds
    them up); varints may be written longer than they need, or run past 10 bytes."""
    wire = draw(tensor_protos()).SerializeToString()
    way = draw(st.sampled_from(["none", "packed", "unpacked"]))
    if draw(st.booleans()):
        more = draw(st.lists(st.floats(width=32), max_size=2))
        values = np.array(more, dtype="<f4").tobytes()
        if way == "packed":
            wire += field(5, values)
        elif way == "unpacked":
            wire += b"".join(
                bytes([5 << 3 | 5]) + values[at : at + 4] for at in range(0, len(values), 4)
            )
        return wire
    varints = draw(st.lists(varint_bytes(), max_size=3))
    if way == "packed":
        wire += field(10, b"".join(varints))
    elif way == "unpacked":
        wire += b"".join(bytes([10 << 3]) + varint for varint in varints)
    return wire


@st.composite
def varint_bytes(draw: st.DrawFn) -> bytes:
    """A varint as any writer may write it: of any value, in up to 12 bytes."""
    value = draw(st.integers(0, 2**70))
    length = draw(st.integers(1, 12))
    groups = [(value >> (7 * at)) & 0x7F for at in range(length)]
    return bytes(group | 0x80 for group in groups[:-1]) + bytes([groups[-1]])


@st.composite
def predict_wire(draw: st.DrawFn) -> bytes:
    """A PredictRequest's bytes, its map entries written by hand: some hold their key or
    their value twice (protobuf keeps the last key and merges the values), a few a field
    no entry has."""
    request = predict_pb2.PredictRequest(output_filter=draw(st.lists(texts, max_size=2)))
    request.model_spec.name = draw(texts)
    parts: list[bytes] = [request.SerializeToString()]
    for _ in range(draw(st.integers(0, 4))):
        fields = [field(1, draw(keys).encode()) for _ in range(draw(st.integers(0, 2)))]
        fields += [field(2, draw(tensor_wire())) for _ in range(draw(st.integers(0, 2)))]
        if draw(st.integers(0, 9)) == 0:  # an entry with a field of its own: kept out of the map
            fields.append(draw(st.sampled_from([bytes([3 << 3, 5]), bytes([1 << 3, 1])])))
        parts.append(field(INPUTS, b"".join(draw(st.permutations(fields)))))
    return b"".join(draw(st.permutations(parts)))


def field(number: int, value: bytes) -> bytes:
    """A length-delimited field, as protobuf writes it."""
    return b"".join(length_delimited(number, [value]))


@given(predict_wire())
def test_predict_requests_with_entries_written_by_hand(wire: bytes) -> None:
    assert_read_as_protobuf_reads(wire, TF_REQUEST)


@given(predict_wire(), st.data())
def test_mutated_predict_requests(wire: bytes, data: st.DataObject) -> None:
    assert_read_as_protobuf_reads(mutated(wire, data), TF_REQUEST)


@given(st.dictionaries(keys, tensor_protos(), max_size=3), st.data())
def test_mutated_predict_answers(
    outputs: dict[str, tensor_pb2.TensorProto], data: st.DataObject
) -> None:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    for key, tensor in outputs.items():
        response.outputs[key].CopyFrom(tensor)
    assert_read_as_protobuf_reads(mutated(response.SerializeToString(), data), TF_ANSWER)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_as_a_predict_request(wire: bytes) -> None:
    assert_read_as_protobuf_reads(wire, TF_REQUEST)
    assert_read_as_protobuf_reads(wire, TF_ANSWER)


def test_tensor_content_is_a_view_of_the_received_bytes() -> None:
    request = predict_pb2.PredictRequest()
    request.inputs["x"].tensor_content = b"\0" * 64
    data = request.SerializeToString()
    message, contents = parse_predict_request(data)
    assert isinstance(contents["x"][4], memoryview) and contents["x"][4].obj is data
    assert message.inputs["x"].tensor_content == b""


def test_packed_float_val_is_a_view_of_the_received_bytes() -> None:
    """The values' own bytes, not a Python float each (a 64-image ``float_val`` took 300 ms
    to become an array); written a field a value, protobuf reads them."""
    values = np.arange(6, dtype="<f4")
    request = predict_pb2.PredictRequest()
    request.inputs["x"].float_val.extend(values.tolist())
    request.inputs["y"].double_val.extend([0.5, -2.0])
    data = request.SerializeToString()
    message, taken = parse_predict_request(data)
    x = taken["x"][5]
    assert isinstance(x, Packed) and x.values is not None and x.values.base.obj is data
    assert (x.array() == values).all() and (taken["y"][6].array() == [0.5, -2.0]).all()
    assert not message.inputs["x"].float_val and not message.inputs["y"].double_val
    unpacked = field(2, field(1, b"x") + field(2, bytes([5 << 3 | 5]) + values[:1].tobytes()))
    _, taken = parse_predict_request(data + unpacked)
    assert taken["x"][5].held is not None  # protobuf read them, as Python numbers
    assert (taken["x"][5].array() == values[:1]).all()


def test_packed_integers_are_counted_before_they_are_read() -> None:
    """57 MB of one-byte ``int64_val`` took protobuf past 1 GB before anything counted
    them: read apart, they are counted first and decoded only when asked, as protobuf
    decodes them (an int32 field keeps a value's low 32 bits, a bool is whether not 0)."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 11, size=50_000)  # every varint length, across many blocks
    values = rng.integers(0, 2**63, size=50_000, dtype=np.uint64) >> (
        np.uint64(64) - np.minimum(7 * lengths, 64).astype(np.uint64)
    )
    for name, dtype in (("int_val", np.int32), ("int64_val", np.int64), ("uint64_val", np.uint64)):
        request = predict_pb2.PredictRequest()
        tensor = request.inputs["x"]
        if dtype is np.int32:
            tensor.int_val.extend(values.astype(np.int32).tolist())
        else:
            getattr(tensor, name).extend(values.astype(dtype).tolist())
        data = request.SerializeToString()
        _, taken = parse_predict_request(data)
        number = tensor.DESCRIPTOR.fields_by_name[name].number
        packed = taken["x"][number]
        assert isinstance(packed, Packed) and packed.varints is not None
        assert packed.varints.obj is data and len(packed) == len(values)
        expected = np.array(getattr(predict_pb2.PredictRequest.FromString(data).inputs["x"], name))
        np.testing.assert_array_equal(packed.array(), expected.astype(dtype))
    wide = field(7, bytes([0x85, 0x80, 0x80, 0x80, 0x80, 0x02]))  # 2**36 + 5 in an int32 field
    flags = field(11, bytes([2, 0, 0x80, 0x01]))  # bools written as 2, 0 and 128
    wire = field(INPUTS, field(1, b"x") + field(2, wide + flags))
    _, taken = parse_predict_request(wire)
    assert taken["x"][7].array().tolist() == [5] and taken["x"][11].array().tolist() == [
        True,
        False,
        True,
    ]
    assert_read_as_protobuf_reads(wire, TF_REQUEST)


@pytest.mark.parametrize(
    "varints",
    [
        bytes([0x80] * 10 + [0x01]),  # 11 bytes
        bytes([1] * 16_380 + [0x80] * 10 + [0x01]),  # 11 bytes, across a block's end
        bytes([1, 0x81]),  # cut short
    ],
)
def test_varints_protobuf_refuses_are_refused(varints: bytes) -> None:
    wire = field(INPUTS, field(1, b"x") + field(2, field(10, varints)))
    with pytest.raises(DecodeError):
        predict_pb2.PredictRequest.FromString(wire)
    assert_read_as_protobuf_reads(wire, TF_REQUEST)


def test_protobufs_rules_for_map_entries() -> None:
    """Within an entry the last key and the last tensor_content count (values merge);
    a later entry of the same key replaces the earlier one whole, unless it has a field
    of its own, which keeps it out of the map."""

    def entry(*fields: tuple[int, bytes]) -> bytes:
        return field(INPUTS, b"".join(field(number, value) for number, value in fields))

    def tensor(content: bytes) -> bytes:
        return tensor_pb2.TensorProto(tensor_content=content).SerializeToString()

    wire = (
        entry((1, b"x"), (2, tensor(b"aa")), (2, tensor(b"bb")))
        + entry((1, b"y"), (2, tensor(b"cc")), (1, b"z"))
        + entry((1, b"w"), (2, tensor(b"dd")))
        + entry((2, tensor(b"")), (1, b"w"))
    )
    message, contents = parse_predict_request(wire)
    assert as_read(contents, TF_FIELDS) == {"x": {4: b"bb"}, "z": {4: b"cc"}}
    assert sorted(message.inputs) == ["w", "x", "z"]
    assert_read_as_protobuf_reads(wire, TF_REQUEST)
    # An entry with a field besides its key and value stays out of the map: "x" keeps bb.
    odd = field(INPUTS, field(1, b"x") + field(2, tensor(b"ee")) + bytes([3 << 3, 5]))
    message, contents = parse_predict_request(wire + odd)
    assert bytes(contents["x"][4]) == b"bb"
    assert_read_as_protobuf_reads(wire + odd, TF_REQUEST)


def test_a_tensor_of_many_fields_is_read_by_protobuf() -> None:
    """Past 1,024 fields the walk hands the message to protobuf: 15 million ``string_val``
    walked in Python took 54 s and 5 GB.  The reading stays protobuf's, with the
    ``tensor_content`` of another input taken apart as before."""
    request = predict_pb2.PredictRequest()
    request.inputs["s"].dtype = types_pb2.DT_STRING
    request.inputs["s"].string_val.extend([b"xy"] * 5000)
    request.inputs["x"].tensor_content = b"\1" * 64
    assert_read_as_protobuf_reads(request.SerializeToString(), TF_REQUEST)
    message, contents = parse_predict_request(request.SerializeToString())
    assert len(message.inputs["s"].string_val) == 5000
    assert bytes(contents["x"][4]) == b"\1" * 64


def test_a_request_of_many_fields_is_refused_unread() -> None:
    """More than 1,024 fields at the top level (5 million empty ``outputs`` took protobuf
    255 MB) are no request for a model: refused before protobuf reads them."""
    infer = v2.ModelInferRequest(model_name="m")
    for _ in range(1025):
        infer.outputs.add()
    predict = predict_pb2.PredictRequest()
    predict.output_filter.extend(["y"] * 1025)
    for data, parse in (
        (infer.SerializeToString(), parse_infer_request),
        (predict.SerializeToString(), parse_predict_request),
    ):
        with pytest.raises(TooManyFields, match="more than 1024 fields"):
            parse(data)
    del infer.outputs[1023:]  # with its model_name, 1,024 fields
    assert len(parse_infer_request(infer.SerializeToString())[0].outputs) == 1023

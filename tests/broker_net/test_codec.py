"""The msgpack codec: exact round trips, zero-copy arrays, and DecodeError for every bad input."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker_net.codec import (
    NDARRAY_EXT,
    MessageValidationError,
    decode,
    decode_message,
    encode,
    encode_parts,
    to_message,
)
from broker_net.codes import ErrorCode
from broker_net.errors import CodecError, DecodeError, MessageTooLargeError, ProtocolVersionError
from broker_net.messages import (
    MESSAGE_TYPES,
    ErrorMessage,
    FAReply,
    PingRequest,
    TrainReply,
    TrainRequest,
)
from tests.broker_net.strategies import (
    AWARE_DATETIMES,
    PAYLOADS,
    arrays,
    model_instances,
    same,
)

_SLOW_DATA = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _train_request(**params: Any) -> TrainRequest:
    return TrainRequest(
        researcher_id="alice",
        experiment_id="exp",
        round=3,
        training_plan="class Plan: ...",
        training_plan_class="Plan",
        dataset_id="ds",
        params=params,
    )


def _ext(payload: bytes) -> bytes:
    data: bytes = msgpack.packb(msgpack.ExtType(NDARRAY_EXT, payload))
    return data


def _array_ext(descr: Any, shape: Any, raw: bytes) -> bytes:
    meta = msgpack.packb([descr, shape])
    return _ext(struct.pack(">H", len(meta)) + meta + raw)


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
@_SLOW_DATA
@given(data=st.data())
def test_every_message_type_round_trips(message_type: str, data: st.DataObject) -> None:
    message = data.draw(model_instances(MESSAGE_TYPES[message_type]))
    decoded = decode_message(encode(message))
    assert type(decoded) is type(message)
    assert same(decoded, message)


def test_message_equality_holds_without_arrays() -> None:
    message = TrainReply(
        request_id="r1",
        researcher_id="alice",
        node_id="n1",
        experiment_id="exp",
        round=0,
        success=True,
        params={"w": [1.0, 2.0], "meta": {"epochs": 2}},
        received_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
        timing={"fit": 1.5},
    )
    assert decode_message(encode(message)) == message


def test_message_with_arrays_round_trips() -> None:
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    message = _train_request(layer={"weight": weights, "bias": np.zeros(3, np.float64)})
    decoded = decode_message(encode(message))
    assert isinstance(decoded, TrainRequest)
    assert np.array_equal(decoded.params["layer"]["weight"], weights)
    assert same(decoded, message)


@_SLOW_DATA
@given(array=arrays())
def test_arrays_round_trip_exactly(array: np.ndarray) -> None:
    decoded = decode(encode(array))
    assert isinstance(decoded, np.ndarray)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    assert same(decoded, array)


@pytest.mark.parametrize(
    "dtype",
    [
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        ">f8",
        "<i2",
        "datetime64[ns]",
        "datetime64[D]",
        "timedelta64[ms]",
        "S3",
        "U2",
        [("x", "<i4"), ("y", ">f8")],
        [("pos", "<f4", (3,)), ("id", "u2")],
        [("inner", [("a", "u1"), ("b", "<c8")]), ("flag", "?")],
        {"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 8], "itemsize": 24},
        {"names": ["a", "b"], "formats": ["u1", "<f8"], "titles": ["Alpha", "Beta"]},
    ],
    ids=str,
)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (2, 0, 3), (2, 3, 4)], ids=str)
def test_dtype_and_shape_round_trip(dtype: Any, shape: tuple[int, ...]) -> None:
    dt = np.dtype(dtype)
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dt.itemsize, dtype=np.uint8)
    array = raw.view(dt).reshape(shape) if dt.kind != "b" else (raw % 2).astype(bool).reshape(shape)
    decoded = decode(encode(array))
    assert decoded.dtype == dt
    assert decoded.shape == shape
    assert decoded.tobytes() == array.tobytes()
    if dt.kind in "biufc":
        assert np.array_equal(decoded, array, equal_nan=dt.kind in "fc")


@pytest.mark.parametrize(
    "view",
    [
        lambda a: a[:, ::2],
        lambda a: a[::-1],
        lambda a: a.T,
        lambda a: np.asfortranarray(a),
        lambda a: a[1:3, 1:3],
        lambda a: np.broadcast_to(a[0], (5, 6)),
        lambda a: a[:, 0],
    ],
    ids=["strided", "reversed", "transposed", "fortran", "window", "broadcast", "column"],
)
def test_non_contiguous_arrays_round_trip_in_c_order(view: Any) -> None:
    array = view(np.arange(30, dtype=np.int32).reshape(5, 6))
    decoded = decode(encode(array))
    assert np.array_equal(decoded, array)
    assert decoded.flags.c_contiguous


def test_zero_dimensional_array_stays_an_array() -> None:
    decoded = decode(encode(np.array(2.5)))
    assert isinstance(decoded, np.ndarray)
    assert decoded.shape == ()
    assert decoded[()] == 2.5


def test_numpy_scalars_decode_as_python_scalars() -> None:
    decoded = decode(encode([np.float32(1.5), np.int64(7), np.bool_(True)]))
    assert decoded == [1.5, 7, True]
    assert [type(x) for x in decoded] == [float, int, bool]


# --- no copies ---------------------------------------------------------------------------------


def test_encode_references_array_memory() -> None:
    array = np.arange(1000, dtype=np.float64)
    parts = encode_parts({"w": array})
    assert np.shares_memory(np.frombuffer(parts[-1], dtype=np.uint8), array)


def _root(array: np.ndarray) -> object:
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base


def test_decoded_array_is_a_read_only_view_of_the_extension_bytes() -> None:
    # msgpack hands each extension payload over as one bytes object; the array is built on
    # it in place, so decoding costs exactly the copy plain msgpack makes for a bin.
    array = np.arange(100_000, dtype=np.float32)
    data = encode({"w": array})
    decoded = decode(data)["w"]
    assert not decoded.flags.owndata
    assert not decoded.flags.writeable
    root = _root(decoded)
    assert isinstance(root, bytes)
    meta = msgpack.packb(["<f4", [100_000]])
    assert len(root) == 2 + len(meta) + array.nbytes
    assert np.shares_memory(np.frombuffer(root, dtype=np.uint8), decoded)


def test_two_arrays_in_one_message_have_separate_buffers() -> None:
    decoded = decode(encode([np.ones(10), np.zeros(10)]))
    assert _root(decoded[0]) is not _root(decoded[1])
    assert np.array_equal(decoded[0], np.ones(10))
    assert np.array_equal(decoded[1], np.zeros(10))


# --- other values ------------------------------------------------------------------------------


@given(value=PAYLOADS)
@_SLOW_DATA
def test_plain_values_round_trip(value: Any) -> None:
    assert same(decode(encode(value)), value)


@given(value=st.binary(max_size=1000))
def test_bytes_round_trip(value: bytes) -> None:
    decoded = decode(encode({"blob": value}))["blob"]
    assert type(decoded) is bytes
    assert decoded == value


@given(moment=AWARE_DATETIMES)
@example(moment=datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC))
@example(moment=datetime(1, 1, 2, tzinfo=timezone(timedelta(hours=23, minutes=59))))
def test_aware_datetimes_round_trip(moment: datetime) -> None:
    decoded = decode(encode(moment))
    assert decoded == moment
    assert decoded.tzinfo is not None
    assert decoded.utcoffset() == timedelta(0)


def test_datetimes_travel_as_msgpack_timestamps() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    raw = msgpack.unpackb(encode(moment), timestamp=0)
    assert raw == msgpack.Timestamp(int(moment.timestamp()), 678_000_000)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(CodecError, match="naive"):
        encode({"at": datetime(2024, 1, 1)})


def test_tuples_and_sets_decode_as_lists() -> None:
    assert decode(encode({"t": (1, 2), "s": {3, 1, 2}})) == {"t": [1, 2], "s": [1, 2, 3]}


@pytest.mark.parametrize(
    "value",
    [
        {1: "int key"},
        {"nested": {(1, 2): "tuple key"}},
        {"x": object()},
        {"big": 2**64},
        {"small": -(2**63) - 1},
        {"objects": np.array([1, "a"], dtype=object)},
        {"structured objects": np.zeros(2, dtype=[("a", "O")])},
    ],
    ids=["int key", "tuple key", "object", "too big", "too small", "object array", "object field"],
)
def test_unencodable_values_raise_codec_error(value: Any) -> None:
    with pytest.raises(CodecError):
        encode(value)


def test_deep_nesting_raises_codec_error() -> None:
    value: Any = []
    for _ in range(10_000):
        value = [value]
    with pytest.raises(CodecError):
        encode(value)


# --- bad input ---------------------------------------------------------------------------------


@given(data=st.binary(max_size=2000))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data)


@_SLOW_DATA
@given(message=model_instances(TrainRequest), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_encodings_raise_decode_error(message: TrainRequest, cut: float) -> None:
    data = encode(message)
    with pytest.raises(DecodeError):
        decode_message(data[: int(len(data) * cut)])


@_SLOW_DATA
@given(
    message=model_instances(FAReply),
    position=st.floats(0, 1, exclude_max=True),
    byte=st.integers(0, 255),
)
def test_corrupted_encodings_only_raise_decode_error(
    message: FAReply, position: float, byte: int
) -> None:
    data = bytearray(encode(message))
    data[int(len(data) * position)] = byte
    try:
        decoded = decode_message(bytes(data))
    except DecodeError:
        return
    assert decoded.type in MESSAGE_TYPES


def test_trailing_bytes_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_message(encode(PingRequest(researcher_id="alice")) + b"\x00")


@pytest.mark.parametrize(
    "value",
    [
        [{"type": "ping_request", "researcher_id": "alice"}],
        "ping_request",
        42,
        None,
        {"researcher_id": "alice"},
        {"type": "no_such_request", "researcher_id": "alice"},
        {"type": 7, "researcher_id": "alice"},
        {"type": "ping_request", "researcher_id": 12},
        {"type": "ping_request", "researcher_id": ""},
        {"type": "ping_request", "researcher_id": "alice", "extra": 1},
        {"type": "list_request", "researcher_id": "alice", "tags": {"a": 1}},
        {"type": "list_reply", "request_id": "r", "researcher_id": "a", "node_id": "n",
         "datasets": [["not", "a", "map"]]},
        {"type": "train_request", "researcher_id": "alice", "params": []},
        {"type": "error", "node_id": "n", "code": 999, "message": "?"},
        {"type": "heartbeat", "node_id": "n", "interval": "soon"},
    ],
)  # fmt: skip
def test_mistyped_messages_raise_message_validation_error(value: Any) -> None:
    with pytest.raises(MessageValidationError):
        decode_message(encode(value))


def test_validation_error_keeps_the_request_id() -> None:
    data = encode({"type": "train_request", "request_id": "r-42", "researcher_id": "alice"})
    with pytest.raises(MessageValidationError) as caught:
        decode_message(data)
    assert caught.value.request_id == "r-42"
    assert {error["loc"][-1] for error in caught.value.errors} >= {"experiment_id", "round"}


@given(
    value=st.recursive(
        st.one_of(
            st.none(), st.integers(-(2**63), 2**63), st.text(max_size=5), st.binary(max_size=5)
        ),
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children)
        ),
    ),
    message_type=st.sampled_from(sorted(MESSAGE_TYPES)),
)
def test_wrong_fields_only_raise_decode_error(value: Any, message_type: str) -> None:
    data = encode({"type": message_type, "request_id": value, "node_id": value, "x": value})
    with pytest.raises(DecodeError):
        decode_message(data)


def test_object_dtype_extension_is_refused() -> None:
    with pytest.raises(DecodeError, match="objects"):
        decode(_array_ext("|O", [1], b"\x00" * 8))


def test_structured_object_dtype_extension_is_refused() -> None:
    with pytest.raises(DecodeError, match="objects"):
        decode(_array_ext([["a", "|O"]], [1], b"\x00" * 8))


@pytest.mark.parametrize(
    "data",
    [
        _array_ext("<f8", [2], b"\x00" * 15),
        _array_ext("<f8", [2], b"\x00" * 17),
        _array_ext("<f8", [-1], b""),
        _array_ext("<f8", "2", b"\x00" * 16),
        _array_ext("<f8", [2**40, 2**40, 2**40], b""),
        _array_ext("not a dtype", [1], b"\x00"),
        _array_ext(["bad", "fields"], [1], b"\x00"),
        _array_ext(7, [1], b"\x00"),
        _ext(b"\x00"),
        _ext(b"\x00\x10\x92"),
        msgpack.packb(msgpack.ExtType(5, b"abc")),
        b"\xc7\x03\xffabc",
        b"\x91" * 5000 + b"\xc0",
    ],
    ids=[
        "short data",
        "long data",
        "negative shape",
        "string shape",
        "huge shape",
        "unknown dtype",
        "bad structured dtype",
        "numeric dtype",
        "short header",
        "truncated meta",
        "unknown extension",
        "bad timestamp",
        "nested too deeply",
    ],
)
def test_malformed_extensions_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_max_size_is_enforced() -> None:
    data = encode(_train_request(w=np.zeros(1000)))
    assert same(decode(data, max_size=len(data)), decode(data))
    with pytest.raises(MessageTooLargeError) as caught:
        decode_message(data, max_size=len(data) - 1)
    assert caught.value.size == len(data)
    assert caught.value.max_size == len(data) - 1


@pytest.mark.parametrize("version", ["2.0", "0.9", "10", "", "x.1", 1, None])
def test_another_major_version_is_refused(version: Any) -> None:
    data = encode({"type": "ping_request", "researcher_id": "a", "protocol_version": version})
    with pytest.raises(ProtocolVersionError):
        decode_message(data)


def test_another_minor_version_is_accepted() -> None:
    data = encode({"type": "ping_request", "researcher_id": "a", "protocol_version": "1.99"})
    assert decode_message(data).protocol_version == "1.99"


def test_to_message_validates_plain_data() -> None:
    error = to_message(
        {"type": "error", "node_id": "n1", "code": 303, "message": "plan not approved"}
    )
    assert isinstance(error, ErrorMessage)
    assert error.code is ErrorCode.PLAN_NOT_APPROVED


@pytest.mark.parametrize("tag", [["ping_request"], {"a": 1}, 3, None, b"ping_request"])
def test_a_message_tag_of_any_type_only_raises_decode_error(tag: Any) -> None:
    with pytest.raises(DecodeError):
        decode_message(encode({"type": tag, "researcher_id": "alice"}))

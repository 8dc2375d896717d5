"""Decoding in place: large encodings give arrays that are views of the buffer they came in,
and the walk decodes exactly what msgpack decodes, with DecodeError for every bad input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_net import codec
from broker_net.codec import NDARRAY_EXT, decode, decode_message, encode, encode_parts
from broker_net.errors import DecodeError
from broker_net.inplace import IN_PLACE_MIN, decode_in_place
from broker_net.messages import MESSAGE_TYPES, FAReply, TrainRequest
from tests.broker_net.strategies import PAYLOADS, model_instances, same

_SLOW_DATA = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def _always_in_place() -> Iterator[None]:
    """Every encoding decoded by the walk, however small."""
    saved = codec.IN_PLACE_MIN
    codec.IN_PLACE_MIN = 0
    try:
        yield
    finally:
        codec.IN_PLACE_MIN = saved


def _train_request(**params: Any) -> TrainRequest:
    return TrainRequest(
        researcher_id="alice", experiment_id="exp", round=3, training_plan="class Plan: ...",
        training_plan_class="Plan", dataset_id="ds", params=params,
    )  # fmt: skip


def test_large_arrays_are_read_only_views_of_the_received_buffer() -> None:
    weights = np.arange(IN_PLACE_MIN // 4 + 10, dtype=np.float32)
    bias = np.ones((3, 4), dtype=np.float64)
    received = bytearray(b"".join(encode_parts(_train_request(weights=weights, bias=bias))))
    message = decode_message(memoryview(received))
    assert isinstance(message, TrainRequest)
    buffer = np.frombuffer(received, dtype=np.uint8)
    for name, original in (("weights", weights), ("bias", bias)):
        decoded = message.params[name]
        assert np.array_equal(decoded, original) and decoded.dtype == original.dtype
        assert np.shares_memory(decoded, buffer)  # no copy out of the buffer
        assert not decoded.flags.writeable
    assert message.round == 3 and message.training_plan_class == "Plan"


def test_small_encodings_still_go_through_msgpack() -> None:
    array = np.arange(10, dtype=np.int64)
    data = encode({"a": array})
    decoded = decode(data)["a"]
    assert not np.shares_memory(decoded, np.frombuffer(data, dtype=np.uint8))


@_SLOW_DATA
@given(value=PAYLOADS)
def test_the_walk_decodes_what_msgpack_decodes(value: Any) -> None:
    data = encode(value)
    with _always_in_place():
        assert same(decode(data), value)


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
@_SLOW_DATA
@given(data=st.data())
def test_every_message_type_round_trips_in_place(message_type: str, data: st.DataObject) -> None:
    message = data.draw(model_instances(MESSAGE_TYPES[message_type]))
    with _always_in_place():
        assert same(decode_message(encode(message)), message)


@pytest.mark.parametrize(
    "value",
    [
        0,
        127,
        128,
        255,
        256,
        65535,
        65536,
        2**32,
        2**64 - 1,
        -1,
        -32,
        -33,
        -128,
        -129,
        -(2**15),
        -(2**31),
        -(2**63),
        1.5,
        float("inf"),
        "",
        "é" * 40,
        "x" * 300,
        "y" * 70_000,
        b"",
        b"z" * 300,
        b"w" * 70_000,
        list(range(20)),
        {"k": None},
        dict.fromkeys((str(i) for i in range(20)), True),
        [[[]]],
        {"b": {b"bytes key": 1}},
    ],
)
def test_every_msgpack_format_decodes_like_msgpack(value: Any) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    assert decode_in_place(memoryview(data), NDARRAY_EXT, codec._array_of) == msgpack.unpackb(
        data, raw=False, strict_map_key=False
    )


def test_float32_decodes_like_msgpack() -> None:
    data = msgpack.packb(np.float32(0.1).item(), use_single_float=True)
    assert decode_in_place(memoryview(data), NDARRAY_EXT, codec._array_of) == msgpack.unpackb(data)


@given(data=st.binary(max_size=2000))
def test_random_bytes_only_raise_decode_error_in_place(data: bytes) -> None:
    with _always_in_place(), pytest.raises(DecodeError):
        decode_message(data)


@_SLOW_DATA
@given(message=model_instances(TrainRequest), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_encodings_raise_decode_error_in_place(message: TrainRequest, cut: float) -> None:
    data = encode(message)
    with _always_in_place(), pytest.raises(DecodeError):
        decode_message(data[: int(len(data) * cut)])


@_SLOW_DATA
@given(
    message=model_instances(FAReply),
    position=st.floats(0, 1, exclude_max=True),
    byte=st.integers(0, 255),
)
def test_corrupted_encodings_only_raise_decode_error_in_place(
    message: FAReply, position: float, byte: int
) -> None:
    data = bytearray(encode(message))
    data[int(len(data) * position)] = byte
    with _always_in_place():
        try:
            decoded = decode_message(bytes(data))
        except DecodeError:
            return
    assert decoded.type in MESSAGE_TYPES


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb({"a": 1}) + b"\x00",
        msgpack.packb({1: "int key"}, strict_types=False),
        msgpack.packb(msgpack.ExtType(5, b"abc")),
        b"\xc7\x03\xffabc",
        b"\xc1",
        b"\xa3\xff\xfe\xfd",
        b"\x91" * 5000 + b"\xc0",
        b"\xdd\xff\xff\xff\xff\xc0",
        b"\xdf\xff\xff\xff\xff",
    ],
    ids=[
        "trailing byte", "int key", "unknown extension", "bad timestamp", "never used",
        "bad utf-8", "nested too deeply", "huge array count", "huge map count",
    ],
)  # fmt: skip
def test_bad_input_raises_decode_error_in_place(data: bytes) -> None:
    with _always_in_place(), pytest.raises(DecodeError):
        decode(data)

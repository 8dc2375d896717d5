"""msgpack encoding of broker-net messages and values, numpy arrays included.

Arrays travel as a msgpack extension (type 1) holding a small header (dtype descriptor and
shape) followed by the array's raw bytes, never pickle. Encoding hands the array's buffer to a
single ``join``, so an array is copied once, exactly as plain ``msgpack.packb`` copies a bytes
object; decoding builds arrays with ``numpy.frombuffer`` over the bytes msgpack already made, so
they are read-only views, not copies; an encoding of a megabyte or more is decoded in place
(:mod:`broker_net.inplace`), its arrays views of the buffer it came in, so a large message is
never copied out of it. Decoding never raises anything but :class:`DecodeError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import msgpack
import numpy as np
from pydantic import BaseModel, ValidationError

from broker_net.errors import CodecError, DecodeError, MessageTooLargeError, ProtocolVersionError
from broker_net.inplace import IN_PLACE_MIN, decode_in_place
from broker_net.messages import MESSAGE_TYPES, AnyMessage, message_adapter
from broker_net.version import PROTOCOL_VERSION

CONTENT_TYPE = "application/msgpack"
"""The AMQP content type of everything broker-net puts on the wire."""

DEFAULT_MAX_SIZE = 4 * 1024**3
"""Default largest message :func:`decode` accepts, in bytes."""

NDARRAY_EXT = 1
"""msgpack extension type code of a numpy array."""

_EXT32 = struct.Struct(">BIb")
_META_LEN = struct.Struct(">H")
Parts = list[bytes | memoryview]


class MessageValidationError(DecodeError):
    """Raised when well-formed msgpack does not describe a valid message.

    Attributes:
        request_id: the request id found in the data, if any, so the sender can be answered.
        errors: pydantic's list of problems.
    """

    def __init__(self, text: str, *, request_id: str | None, errors: list[Any]) -> None:
        super().__init__(text)
        self.request_id = request_id
        self.errors = errors


def _ndarray_parts(array: np.ndarray[Any, Any]) -> Parts:
    if array.dtype.hasobject:
        raise CodecError("numpy arrays of Python objects cannot be encoded")
    contiguous = np.ascontiguousarray(array)
    meta = msgpack.packb([np.lib.format.dtype_to_descr(array.dtype), list(array.shape)])
    raw = memoryview(contiguous.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    length = _META_LEN.size + len(meta) + raw.nbytes
    if length > 0xFFFFFFFF:
        raise CodecError(f"an array of {raw.nbytes} bytes does not fit a msgpack extension")
    return [_EXT32.pack(0xC9, length, NDARRAY_EXT) + _META_LEN.pack(len(meta)) + meta, raw]


_PLAIN: frozenset[type] = frozenset({str, int, float, bool, bytes, type(None)})


def _is_flat(mapping: dict[Any, Any]) -> bool:
    """True when every key is a str and every value a plain value or an aware datetime, so
    msgpack can pack the map as it is."""
    for key, item in mapping.items():
        if type(key) is not str:
            return False
        kind = type(item)
        if kind not in _PLAIN and not (kind is datetime and item.tzinfo is not None):
            return False
    return True


def _pack_flat(pack: Callable[[Any], bytes], mapping: dict[str, Any]) -> bytes:
    """Pack a map :func:`_is_flat` accepted, with msgpack's errors as :class:`CodecError`."""
    try:
        return pack(mapping)
    except (OverflowError, ValueError) as exc:
        raise CodecError(f"cannot encode a map: {exc}") from exc


def _packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, datetime=True)  # type: ignore[no-any-return]


class _Encoder:
    """Walks a value, packing plain parts with msgpack and arrays as zero-copy extension parts."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, datetime=True, autoreset=True)
        self.parts: Parts = []
        self._pending = bytearray()

    def finish(self) -> Parts:
        if self._pending:
            self.parts.append(bytes(self._pending))
            self._pending = bytearray()
        return self.parts

    def add(self, value: Any) -> None:
        # Exact built-in types first: most of a message is plain values and dicts, and the
        # isinstance chain below (Mapping is an ABC) costs more than packing them.
        kind = type(value)
        if kind in _PLAIN:
            try:
                self._pending += self._packer.pack(value)
            except OverflowError as exc:
                raise CodecError(f"cannot encode {kind.__name__}: {exc}") from exc
            return
        if kind is dict and _is_flat(value):
            # A map of plain values (a ping, a status reply) is packed in one call.
            self._pending += _pack_flat(self._packer.pack, value)
            return
        if kind is dict or isinstance(value, Mapping):
            self._pending += self._packer.pack_map_header(len(value))
            for key, item in value.items():
                if not isinstance(key, str | bytes):
                    # decode() accepts only str and bytes map keys (msgpack's strict_map_key).
                    raise CodecError(f"map keys must be str or bytes, not {type(key).__name__}")
                self.add(key)
                self.add(item)
        elif isinstance(value, list | tuple):
            self._add_sequence(value)
        elif isinstance(value, np.ndarray):
            self.finish()
            self.parts.extend(_ndarray_parts(value))
        elif isinstance(value, np.generic):
            self._pending += self._packer.pack(value.item())
        elif isinstance(value, BaseModel):
            self.add(value.model_dump())
        elif isinstance(value, set | frozenset):
            self._add_sequence(sorted(value))
        elif isinstance(value, datetime) and value.tzinfo is None:
            raise CodecError("naive datetimes cannot be encoded; give them a timezone")
        else:
            try:
                self._pending += self._packer.pack(value)
            except (TypeError, ValueError, OverflowError) as exc:
                raise CodecError(f"cannot encode {type(value).__name__}: {exc}") from exc

    def _add_sequence(self, value: list[Any] | tuple[Any, ...]) -> None:
        if all(isinstance(item, str | int | float | bool | bytes) for item in value):
            self._pending += self._packer.pack(value)
            return
        self._pending += self._packer.pack_array_header(len(value))
        for item in value:
            self.add(item)


def encode_parts(value: Any) -> Parts:
    """Encode ``value`` as a list of buffers whose concatenation is one msgpack object.

    The parts reference numpy arrays' memory directly; join them (or write them out) before the
    arrays change.

    Raises:
        CodecError: the value holds something msgpack cannot carry (object arrays, naive
            datetimes, map keys other than str or bytes, arbitrary objects).
    """
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if type(value) is dict and _is_flat(value):
        # Most messages (pings, status, errors) hold plain values only: one msgpack call,
        # without setting up an encoder.
        return [_pack_flat(_packb, value)]
    encoder = _Encoder()
    try:
        encoder.add(value)
    except RecursionError as exc:
        raise CodecError("the value is nested too deeply to encode") from exc
    return encoder.finish()


def encode(value: Any) -> bytes:
    """Encode ``value`` (a message, or plain data with numpy arrays) to msgpack bytes.

    Raises:
        CodecError: the value cannot be encoded.
    """
    parts = encode_parts(value)
    return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)


def _ext_hook(code: int, data: bytes) -> Any:
    if code != NDARRAY_EXT:
        raise DecodeError(f"unknown msgpack extension type {code}")
    return _array_of(data)


def _array_of(data: bytes | memoryview) -> Any:
    """The array an extension's data holds, a read-only view of ``data``'s buffer."""
    view = memoryview(data)
    (meta_len,) = _META_LEN.unpack_from(view)
    descr, shape = msgpack.unpackb(view[_META_LEN.size : _META_LEN.size + meta_len])
    dtype = np.lib.format.descr_to_dtype(_as_descr(descr))
    if dtype.hasobject:
        raise DecodeError("numpy arrays of Python objects are refused")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise DecodeError(f"bad array shape {shape!r}")
    count = math.prod(shape)
    offset = _META_LEN.size + meta_len
    if count * dtype.itemsize != view.nbytes - offset:
        raise DecodeError("array data does not match its dtype and shape")
    if dtype.itemsize == 0:
        return np.zeros(shape, dtype=dtype)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    array.flags.writeable = False  # as over bytes, also over a writable reassembly buffer
    return array


def _as_descr(descr: Any) -> Any:
    # msgpack turns the tuples of a structured dtype's descriptor into lists: each field is
    # [name or [title, name], descr, optional subarray shape].
    if not isinstance(descr, list):
        return descr
    fields: list[tuple[Any, ...]] = []
    for field in descr:
        if not isinstance(field, list) or len(field) not in (2, 3):
            raise DecodeError(f"bad structured dtype field {field!r}")
        name = tuple(field[0]) if isinstance(field[0], list) else field[0]
        if len(field) == 2:
            fields.append((name, _as_descr(field[1])))
        else:
            fields.append((name, _as_descr(field[1]), tuple(field[2])))
    return fields


def decode(data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode msgpack bytes made by :func:`encode`.

    Raises:
        MessageTooLargeError: ``data`` is longer than ``max_size``.
        DecodeError: ``data`` is not a complete, valid encoding. No other exception escapes.
    """
    view = memoryview(data)
    size = view.nbytes
    if size > max_size:
        raise MessageTooLargeError(size, max_size)
    try:
        if size >= IN_PLACE_MIN:
            # Arrays as views of ``data``, not copies (see broker_net.inplace).
            return decode_in_place(view, NDARRAY_EXT, _array_of)
        return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, timestamp=3)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack and numpy raise many types for corrupt input
        raise DecodeError(f"not a valid msgpack encoding: {type(exc).__name__}: {exc}") from exc


def check_protocol_version(version: Any) -> None:
    """Raise :class:`ProtocolVersionError` unless ``version`` shares our major version."""
    if not isinstance(version, str):
        raise ProtocolVersionError(f"protocol version must be a string, not {version!r}")
    if version.split(".")[0] != PROTOCOL_VERSION.split(".")[0]:
        raise ProtocolVersionError(
            f"protocol version {version!r} is not compatible with {PROTOCOL_VERSION!r}"
        )


_VALIDATORS: dict[str, Any] = {
    tag: cls.__pydantic_validator__ for tag, cls in MESSAGE_TYPES.items()
}
"""Each message class's own validator, by ``type`` tag."""


def to_message(value: Any) -> AnyMessage:
    """Validate decoded data into the message class its ``type`` names.

    Raises:
        ProtocolVersionError: the data speaks another major protocol version.
        MessageValidationError: the data is not a valid message.
    """
    if not isinstance(value, dict):
        raise MessageValidationError(
            f"a message must be a map, not {type(value).__name__}", request_id=None, errors=[]
        )
    request_id = value.get("request_id")
    request_id = request_id if isinstance(request_id, str) else None
    version = value.get("protocol_version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        check_protocol_version(version)
    tag = value.get("type")
    validator = _VALIDATORS.get(tag) if type(tag) is str else None
    if validator is not None:
        # The class the tag names validates directly (what the union does after reading the
        # tag, minus the union's dispatch); a failure goes through the union below, so the
        # error reads the same either way.
        try:
            return validator.validate_python(value)  # type: ignore[no-any-return]
        except ValidationError:
            pass
    try:
        return message_adapter.validate_python(value)
    except ValidationError as exc:
        raise MessageValidationError(
            f"invalid {value.get('type', 'untyped')!s} message: {exc}",
            request_id=request_id,
            errors=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from exc


def decode_message(
    data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_SIZE
) -> AnyMessage:
    """Decode bytes made by ``encode(message)`` back into a message.

    Raises:
        DecodeError: (or a subclass) for anything that is not a valid message.
    """
    return to_message(decode(data, max_size=max_size))

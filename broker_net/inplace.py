"""Decoding in place: the numpy arrays of a large encoding as views of the buffer it is in.

msgpack hands an extension's data to its hook as a fresh ``bytes`` object, so decoding a
message with its own ``unpackb`` copies every array out of the buffer the message arrived in
(for a chunked message, the buffer it was reassembled into): a 1 GB update cost 1 GB more at
the receiver. :func:`decode_in_place` walks the msgpack structure itself instead, building
each array extension (:data:`broker_net.codec.NDARRAY_EXT`) with ``numpy.frombuffer`` over the
buffer, and reading plain values in Python (timestamps and other extensions through msgpack).
The encoding on the wire is the same; :func:`broker_net.codec.decode` uses this walk for
encodings of :data:`IN_PLACE_MIN` bytes or more, where the arrays are the bulk of the bytes and
the walk's cost per value (about a microsecond) is nothing next to a copy.

The arrays keep the whole buffer alive, and are read-only, as those made from ``bytes`` are.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

from broker_net.errors import DecodeError

IN_PLACE_MIN = 1024**2
"""Encodings at least this long are decoded in place by :func:`broker_net.codec.decode`."""

ArrayBuilder = Callable[[memoryview], Any]
"""Builds an array from an extension's data (a view of the buffer); raises DecodeError."""

_FLOAT32 = struct.Struct(">f")
_FLOAT64 = struct.Struct(">d")
_UNSIGNED = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_SIGNED = {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_STR = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_CONSTANTS = {0xC0: None, 0xC2: False, 0xC3: True}


def decode_in_place(data: memoryview, code: int, build: ArrayBuilder) -> Any:
    """Decode the msgpack object that fills ``data``; extensions of type ``code`` become
    ``build(view of their data)``.

    Raises:
        DecodeError: ``data`` is not exactly one valid msgpack object.
    """
    view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    walk = _Walk(view, code, build)
    try:
        value, end = walk.item(0)
    except DecodeError:
        raise
    except (IndexError, struct.error) as exc:
        raise DecodeError(f"truncated msgpack encoding ({type(exc).__name__})") from exc
    except RecursionError as exc:
        raise DecodeError("the encoding is nested too deeply") from exc
    if end != view.nbytes:
        raise DecodeError(f"{view.nbytes - end} bytes after the end of the encoding")
    return value


class _Walk:
    __slots__ = ("build", "code", "size", "view")

    def __init__(self, view: memoryview, code: int, build: ArrayBuilder) -> None:
        self.view = view
        self.size = view.nbytes
        self.code = code
        self.build = build

    def _span(self, start: int, length: int) -> int:
        end = start + length
        if end > self.size:
            raise DecodeError("truncated msgpack encoding")
        return end

    def _length(self, pos: int, width: int) -> int:
        return int.from_bytes(self.view[pos : self._span(pos, width)], "big")

    def item(self, pos: int) -> tuple[Any, int]:
        """The object at ``pos`` and the position after it."""
        view = self.view
        byte = view[pos]
        if byte <= 0x7F:
            return byte, pos + 1
        if byte >= 0xE0:
            return byte - 0x100, pos + 1
        if byte <= 0x8F:
            return self._map(pos + 1, byte & 0x0F)
        if byte <= 0x9F:
            return self._array(pos + 1, byte & 0x0F)
        if byte <= 0xBF:
            return self._str(pos + 1, byte & 0x1F)
        if byte in _CONSTANTS:
            return _CONSTANTS[byte], pos + 1
        if byte in _STR:
            width = _STR[byte]
            return self._str(pos + 1 + width, self._length(pos + 1, width))
        if byte in _BIN:
            width = _BIN[byte]
            start = pos + 1 + width
            end = self._span(start, self._length(pos + 1, width))
            return bytes(view[start:end]), end
        if byte == 0xCB:
            return _FLOAT64.unpack_from(view, pos + 1)[0], pos + 9
        if byte == 0xCA:
            return _FLOAT32.unpack_from(view, pos + 1)[0], pos + 5
        if byte in _UNSIGNED:
            end = self._span(pos + 1, _UNSIGNED[byte])
            return int.from_bytes(view[pos + 1 : end], "big"), end
        if byte in _SIGNED:
            end = self._span(pos + 1, _SIGNED[byte])
            return int.from_bytes(view[pos + 1 : end], "big", signed=True), end
        if byte in (0xDC, 0xDD):
            width = 2 if byte == 0xDC else 4
            return self._array(pos + 1 + width, self._length(pos + 1, width))
        if byte in (0xDE, 0xDF):
            width = 2 if byte == 0xDE else 4
            return self._map(pos + 1 + width, self._length(pos + 1, width))
        if byte in _EXT:
            width = _EXT[byte]
            return self._ext(pos, pos + 2 + width, self._length(pos + 1, width))
        if byte in _FIXEXT:
            return self._ext(pos, pos + 2, _FIXEXT[byte])
        raise DecodeError(f"byte 0x{byte:02x} starts no msgpack object")

    def _str(self, start: int, length: int) -> tuple[str, int]:
        end = self._span(start, length)
        try:
            return str(self.view[start:end], "utf-8"), end
        except UnicodeDecodeError as exc:
            raise DecodeError(f"a string is not valid UTF-8: {exc}") from exc

    def _array(self, pos: int, count: int) -> tuple[list[Any], int]:
        if count > self.size - pos:  # every item takes a byte at least
            raise DecodeError("truncated msgpack encoding")
        items = []
        for _ in range(count):
            value, pos = self.item(pos)
            items.append(value)
        return items, pos

    def _map(self, pos: int, count: int) -> tuple[dict[Any, Any], int]:
        if 2 * count > self.size - pos:
            raise DecodeError("truncated msgpack encoding")
        result: dict[Any, Any] = {}
        for _ in range(count):
            key, pos = self.item(pos)
            if type(key) is not str and type(key) is not bytes:
                # As msgpack's strict_map_key: only str and bytes keys.
                raise DecodeError(f"map keys must be str or bytes, not {type(key).__name__}")
            result[key], pos = self.item(pos)
        return result, pos

    def _ext(self, pos: int, start: int, length: int) -> tuple[Any, int]:
        end = self._span(start, length)
        code = self.view[start - 1]
        if code == self.code:
            return self.build(self.view[start:end]), end
        # Timestamps (and unknown types, refused with msgpack's own error) go through msgpack.
        try:
            value = msgpack.unpackb(self.view[pos:end], timestamp=3, ext_hook=_unknown_ext)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"bad msgpack extension: {type(exc).__name__}: {exc}") from exc
        return value, end


def _unknown_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"unknown msgpack extension type {code}")

"""`DataRequest` on the wire without copying the docs payload through protobuf.

A `DataRequest` is a protobuf message (see orchestra.proto): field 1 the small `Header`, field 2 the docs
payload as bytes. protobuf's Python API copies a bytes field when a message is built, again when it is
serialised and again when it is parsed — four copies of a 26 MB payload per hop. This module writes and
reads exactly the same protobuf encoding by hand for the two top-level fields, so a payload is sliced
(a zero-copy memoryview) on the way in and joined once on the way out. Any standard protobuf client can
still talk to us: what goes over the wire is a valid `DataRequest`. Unknown fields are skipped; a
malformed message raises WireError.
"""

from __future__ import annotations

from orchestra_nb.errors import WireError
from orchestra_nb.wire._generated.orchestra_pb2 import Header

__all__ = ["Frame", "deserialize", "serialize", "serialize_parts"]


class Frame:
    """A DataRequest: `header` (protobuf Header) and `docs` (the codec payload, bytes or memoryview)."""

    __slots__ = ("docs", "header")

    def __init__(self, header: Header | None = None, docs: bytes | memoryview = b"") -> None:
        self.header = header if header is not None else Header()
        self.docs = docs


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def serialize_parts(frame: Frame) -> tuple[bytes, bytes | memoryview]:
    """The encoding as (everything before the docs, the docs), for writers that need no joined copy."""
    header = frame.header.SerializeToString()
    docs = frame.docs
    size = docs.nbytes if isinstance(docs, memoryview) else len(docs)
    return b"".join((b"\x0a", _varint(len(header)), header, b"\x12", _varint(size))), docs


def serialize(frame: Frame) -> bytes:
    prefix, docs = serialize_parts(frame)
    return prefix + docs if isinstance(docs, bytes) else b"".join((prefix, docs))


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise WireError("malformed request: truncated varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def deserialize(data: bytes | bytearray | memoryview) -> Frame:
    view = memoryview(data)
    frame = Frame()
    pos = 0
    end = len(view)
    try:
        while pos < end:
            key, pos = _read_varint(view, pos)
            field, wire_type = key >> 3, key & 7
            if wire_type == 2:
                size, pos = _read_varint(view, pos)
                if pos + size > end:
                    raise WireError("malformed request: a field runs past the end")
                if field == 1:
                    frame.header.MergeFromString(view[pos:pos + size])
                elif field == 2:
                    frame.docs = view[pos:pos + size]
                pos += size
            elif wire_type == 0:
                _, pos = _read_varint(view, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise WireError(f"malformed request: unsupported wire type {wire_type}")
    except WireError:
        raise
    except Exception as exc:  # protobuf DecodeError on a bad header
        raise WireError(f"malformed request: {exc}") from None
    return frame

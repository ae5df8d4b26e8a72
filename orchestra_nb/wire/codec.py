"""The docs payload: documents as JSON plus numpy arrays and bytes as raw, aligned buffers.

Layout::

    b"ONB1" | u32 little-endian meta length | meta JSON | zero padding to 64 | buffer 0 | buffer 1 | ...

The meta JSON is ``{"docs": [...], "bufs": [[offset, nbytes], ...]}``; inside the docs, an array is
``{"$nd": [buffer, dtype, shape]}`` and a bytes value ``{"$b": buffer}``. Only plain numeric dtypes
(bool, integers, floats, complex) are accepted, so decoding can never build an object array, and nothing
is ever unpickled: a payload that does not start with the magic is refused with a WireError.

Decoding copies the payload once into a bytearray so that arrays come back writable (unless it is given
a writable memoryview, e.g. a frame the stream hop read into its own buffer); the arrays are views into
that buffer. The gateway mostly forwards payloads without calling this module at all.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel

from orchestra_nb.errors import WireError

__all__ = ["MAGIC", "decode", "decode_json", "encode", "encode_json", "from_json_docs"]

MAGIC = b"ONB1"
_ALIGN = 64
_KINDS = frozenset("biufc")
_HEAD = struct.Struct("<4sI")


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def encode(docs: Iterable[Any]) -> bytes:
    """Encode pydantic documents (or plain dicts) to a payload; None and empty fields are left out."""
    buffers: list[memoryview] = []

    def walk(value: Any) -> Any:
        if isinstance(value, BaseModel):
            fields = dict(value.__dict__)
            if value.__pydantic_extra__:
                fields.update(value.__pydantic_extra__)
            # unset values (None, empty containers) are left out: they are the defaults
            return {k: walk(v) for k, v in fields.items()
                    if v is not None and not (isinstance(v, (dict, list)) and not v)}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _KINDS:
                raise WireError(f"cannot send an array of dtype {value.dtype}: only bool, integer, float "
                                "and complex arrays travel on the wire")
            arr = value if value.flags.c_contiguous else value.copy(order="C")  # keeps 0-d arrays 0-d
            buffers.append(memoryview(arr.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]  # 0-d, empty too
            return {"$nd": [len(buffers) - 1, arr.dtype.str, list(arr.shape)]}
        if isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append(memoryview(value).cast("B"))
            return {"$b": len(buffers) - 1}
        if isinstance(value, np.generic):
            return value.item()
        return value

    plain = [walk(d) for d in docs]
    return _assemble(plain, buffers)


def encode_json(docs: list[Any]) -> bytes:
    """Encode JSON-ready documents (as an HTTP body gives them): no buffers."""
    return _assemble(docs, [])


def _assemble(plain: list[Any], buffers: list[memoryview]) -> bytes:
    offsets: list[list[int]] = []
    pos = 0
    for buf in buffers:
        offsets.append([pos, buf.nbytes])
        pos += buf.nbytes + _pad(buf.nbytes)
    try:
        meta = json.dumps({"docs": plain, "bufs": offsets}, separators=(",", ":"),
                          allow_nan=True).encode()
    except TypeError as exc:
        raise WireError(f"a document field cannot be sent: {exc}") from None
    start = _HEAD.size + len(meta)
    parts: list[bytes | memoryview] = [_HEAD.pack(MAGIC, len(meta)), meta, b"\0" * _pad(start)]
    for buf in buffers:
        parts.append(buf)
        parts.append(b"\0" * _pad(buf.nbytes))
    return b"".join(parts)


def _meta(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int]:
    if len(data) == 0:
        return {"docs": [], "bufs": []}, 0
    if len(data) < _HEAD.size or bytes(data[:4]) != MAGIC:
        raise WireError("the docs payload is not an orchestra-nb payload (bad magic); payloads are never "
                        "unpickled or evaluated — send documents with an orchestra-nb Client or as JSON over HTTP")
    _, size = _HEAD.unpack_from(data, 0)
    end = _HEAD.size + size
    if end > len(data):
        raise WireError("the docs payload is truncated")
    try:
        meta = json.loads(bytes(data[_HEAD.size:end]))
    except ValueError as exc:
        raise WireError(f"the docs payload has invalid meta JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("docs"), list):
        raise WireError("the docs payload meta must be an object with a 'docs' list")
    return meta, end + _pad(end)


def decode_json(data: bytes | memoryview) -> list[Any]:
    """Decode a payload to JSON-ready dicts: arrays as nested lists, bytes as base64 strings."""
    return [_to_jsonable(d) for d in decode(data)]


def from_json_docs(docs: list[Any]) -> list[Any]:
    """The inverse for documents that came as JSON: a `blob` (also in matches) is base64 text."""
    def walk(doc: Any) -> Any:
        if not isinstance(doc, dict):
            return doc
        out = dict(doc)
        blob = out.get("blob")
        if isinstance(blob, str):
            try:
                out["blob"] = base64.b64decode(blob, validate=True)
            except (binascii.Error, ValueError):
                raise WireError("a doc's blob must be base64 text in JSON") from None
        if isinstance(out.get("matches"), list):
            out["matches"] = [walk(m) for m in out["matches"]]
        return out

    return [walk(d) for d in docs]


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return value


def decode(data: bytes | memoryview) -> list[Any]:
    """Decode a payload to plain dicts with numpy arrays (writable) and bytes in place."""
    meta, base = _meta(data)
    bufs = meta.get("bufs", [])
    if not isinstance(bufs, list):
        raise WireError("the docs payload meta has an invalid 'bufs' table")
    if not bufs:
        owned: bytearray | memoryview = bytearray()
    elif isinstance(data, memoryview) and not data.readonly:
        owned = data  # already our own writable copy (a frame read off a socket): decode in place
    else:
        owned = bytearray(data)  # one copy, so that the arrays come back writable
    view = memoryview(owned)
    total = len(owned)

    def buffer(index: Any) -> memoryview:
        if not isinstance(index, int) or not 0 <= index < len(bufs):
            raise WireError(f"the docs payload refers to a missing buffer {index!r}")
        entry = bufs[index]
        if (not isinstance(entry, list) or len(entry) != 2
                or not all(isinstance(x, int) and x >= 0 for x in entry)):
            raise WireError("the docs payload has a malformed buffer entry")
        offset, nbytes = entry
        if base + offset + nbytes > total:
            raise WireError("the docs payload is truncated: a buffer runs past its end")
        return view[base + offset: base + offset + nbytes]

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1 and "$nd" in value:
                return _array(value["$nd"], buffer)
            if len(value) == 1 and "$b" in value:
                return bytes(buffer(value["$b"]))
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return [walk(d) for d in meta["docs"]]


def _array(ref: Any, buffer: Any) -> np.ndarray[Any, Any]:
    if not isinstance(ref, list) or len(ref) != 3 or not isinstance(ref[1], str) or not isinstance(ref[2], list):
        raise WireError("the docs payload has a malformed array reference")
    index, dtype_str, shape = ref
    try:
        dtype = np.dtype(dtype_str)
    except TypeError:
        raise WireError(f"the docs payload names an unknown dtype {dtype_str!r}") from None
    if dtype.kind not in _KINDS or dtype.hasobject or dtype.fields is not None:
        raise WireError(f"the docs payload names a refused dtype {dtype_str!r}: only numeric arrays travel")
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise WireError("the docs payload has an invalid array shape")
    buf = buffer(index)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != buf.nbytes:
        raise WireError(f"the docs payload's array of shape {shape} and dtype {dtype_str} does not match "
                        f"its buffer of {buf.nbytes} bytes")
    array: np.ndarray[Any, Any] = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)
    return array

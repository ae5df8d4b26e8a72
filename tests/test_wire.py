"""The wire: codec round trips, hand-written DataRequest framing, and refusal of anything not ours."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from orchestra_nb.docs import Doc
from orchestra_nb.errors import WireError
from orchestra_nb.wire import codec
from orchestra_nb.wire._generated.orchestra_pb2 import DataRequest
from orchestra_nb.wire.frame import Frame, deserialize, serialize

dtypes = st.sampled_from(["bool", "int8", "uint16", "int32", "int64", "float16", "float32", "float64", "complex64"])
arrays = dtypes.flatmap(lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)))


@settings(max_examples=200, deadline=None)
@given(tensor=arrays, text=st.text(max_size=30), tags=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
       blob=st.binary(max_size=40))
def test_docs_round_trip_bit_exact(tensor: np.ndarray, text: str, tags: dict[str, int], blob: bytes) -> None:
    doc = Doc(text=text, tensor=tensor, tags=tags, blob=blob or None, matches=[Doc(id="m", embedding=tensor)])
    [back] = [Doc.model_validate(d) for d in codec.decode(codec.encode([doc]))]
    assert back.tensor.dtype == tensor.dtype and back.tensor.shape == tensor.shape
    assert back.tensor.tobytes() == tensor.tobytes()  # bit-exact, NaNs included
    assert back.matches[0].embedding.tobytes() == tensor.tobytes()
    assert (back.text, back.tags, back.blob, back.id) == (text, tags, blob or None, doc.id)
    assert back.tensor.flags.writeable


def test_object_arrays_are_refused_both_ways() -> None:
    with pytest.raises(WireError, match="dtype object"):
        codec.encode([{"tensor": np.array([object()], dtype=object)}])
    meta = json.dumps({"docs": [{"t": {"$nd": [0, "|O", [1]]}}], "bufs": [[0, 8]]}).encode()
    payload = struct.pack("<4sI", b"ONB1", len(meta)) + meta + b"\0" * 64
    with pytest.raises(WireError, match="refused dtype"):
        codec.decode(payload)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_payloads_only_ever_raise_wire_error(data: bytes) -> None:
    for candidate in (data, b"ONB1" + data):
        try:
            codec.decode(candidate)
        except WireError:
            pass


@settings(max_examples=300, deadline=None)
@given(meta=st.recursive(st.none() | st.integers() | st.text(max_size=5) | st.floats(allow_nan=False),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["docs", "bufs", "$nd", "$b", "x"]), c, max_size=3),
                         max_leaves=10))
def test_crafted_meta_only_ever_raises_wire_error(meta: object) -> None:
    raw = json.dumps(meta).encode()
    payload = struct.pack("<4sI", b"ONB1", len(raw)) + raw + b"\0" * 128
    try:
        codec.decode(payload)
    except WireError:
        pass


def test_a_pickle_is_refused_without_being_loaded() -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("executed!",))

    with pytest.raises(WireError, match="never unpickled"):
        codec.decode(pickle.dumps(Boom()))


@given(endpoint=st.text(max_size=20), params=st.binary(max_size=50), docs=st.binary(max_size=300),
       results=st.dictionaries(st.text(max_size=5), st.binary(max_size=10), max_size=3))
def test_frames_are_standard_protobuf(endpoint: str, params: bytes, docs: bytes, results: dict[str, bytes]) -> None:
    frame = Frame(docs=docs)
    frame.header.endpoint = endpoint
    frame.header.parameters = params
    for k, v in results.items():
        frame.header.results[k] = v
    wire = serialize(frame)
    message = DataRequest.FromString(wire)  # any protobuf client reads what we write ...
    assert message.docs == docs and message.header.endpoint == endpoint and dict(message.header.results) == results
    back = deserialize(message.SerializeToString())  # ... and we read what it writes
    assert bytes(back.docs) == docs and back.header == message.header


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=100))
def test_malformed_frames_raise_wire_error(data: bytes) -> None:
    try:
        deserialize(data)
    except WireError:
        pass

"""Documents: a pydantic v2 model with numpy tensors, and the typed-schema conversion of handlers.

`Doc` carries the common fields; users subclass it for typed schemas. Tensors are numpy arrays: the
validator accepts arrays, nested lists (what JSON gives) and torch tensors (converted at the edge,
without importing torch here). Serialising to JSON turns arrays into nested lists.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

__all__ = ["Doc", "DocList", "NdArray", "doc_type_of", "to_array"]


def to_array(value: Any) -> np.ndarray[Any, Any]:
    """Convert arrays, nested lists and torch tensors to a numpy array."""
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__
    if module.startswith("torch"):
        # a torch tensor: detach and move to host memory without importing torch ourselves
        return np.asarray(value.detach().cpu().numpy())
    if isinstance(value, (list, tuple, int, float)):
        try:
            arr = np.asarray(value)
        except ValueError:  # ragged: rows of different lengths
            raise ValueError("a tensor must be a rectangular nested list of numbers; its rows differ in "
                             "length") from None
        if arr.dtype == object or arr.dtype.kind not in "biufc":
            got = "text" if arr.dtype.kind == "U" else str(arr.dtype)
            raise ValueError("a tensor must be a rectangular nested list of numbers (booleans, integers, "
                             f"floats or complex), got {got}")
        return arr
    raise ValueError(f"expected a numpy array, a nested list of numbers or a torch tensor, got {type(value).__name__}")


def _array_to_list(value: np.ndarray[Any, Any]) -> Any:
    return value.tolist()


NdArray = Annotated[
    Any,
    PlainValidator(to_array),
    PlainSerializer(_array_to_list, when_used="json"),
    WithJsonSchema({"type": "array", "items": {}, "description": "a tensor as a nested list of numbers"}),
]
"""A numpy array field: accepts arrays, nested lists and torch tensors; JSON as nested lists."""


Blob = Annotated[bytes, WithJsonSchema({"type": "string", "contentEncoding": "base64",
                                         "description": "bytes; base64 text in JSON (HTTP)"})]
"""Bytes in a document: raw on the gRPC wire, base64 text over HTTP."""


def _new_id() -> str:
    return uuid.uuid4().hex


class Doc(BaseModel):
    """A document. Subclass it to declare a typed schema for an endpoint."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="allow")

    id: str = Field(default_factory=_new_id)
    text: str | None = None
    tensor: NdArray | None = None
    embedding: NdArray | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    uri: str | None = None
    blob: Blob | None = None
    matches: list[Doc] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel) or type(other) is not type(self):
            return NotImplemented
        return _equal(self.__dict__, other.__dict__)

    __hash__ = None  # type: ignore[assignment]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


D = TypeVar("D", bound=BaseModel)


class DocList(list[D], Generic[D]):
    """A list of documents; `DocList[MyDoc]` in a handler's hints names its schema.

    A result of `post()` also carries `results`: the dicts that executors returned, by executor name.
    """

    results: dict[str, Any]

    def __init__(self, docs: Iterable[D] = ()) -> None:
        super().__init__(docs)
        self.results = {}

    @property
    def texts(self) -> list[str | None]:
        return [getattr(d, "text", None) for d in self]


def doc_type_of(hint: Any) -> type[BaseModel] | None:
    """The document model named by a hint such as `list[MyDoc]`, `DocList[MyDoc]` or `MyDoc`."""
    if hint is None or hint is typing.Any:
        return None
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    origin = typing.get_origin(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        for arg in typing.get_args(hint):
            found = doc_type_of(arg)
            if found is not None:
                return found
        return None
    if origin is not None and isinstance(origin, type) and issubclass(origin, (list, tuple)):
        args = typing.get_args(hint)
        if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0]
    return None

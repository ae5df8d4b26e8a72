"""Executor base class and the `@requests` decorator.

An Executor is a plain class: methods marked with `@requests(on=...)` serve endpoints. The endpoint
table is built once per class (`__init_subclass__`), so looking up a handler per request is a dict
lookup. A handler takes `docs` and `parameters` (either may be left out of its signature) and returns
new docs, `None` (the input docs, possibly mutated, go on), or a dict (returned to the client as this
executor's results, with the input docs going on).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestra_nb.docs import Doc, doc_type_of

__all__ = ["Executor", "Handler", "RuntimeArgs", "requests"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__orchestra_endpoints__"
DEFAULT = "*"


@dataclasses.dataclass
class RuntimeArgs:
    """Where this replica runs; set before `__init__` is called."""

    name: str = "executor"
    replica_id: int = 0
    replicas: int = 1
    shard_id: int = 0
    shards: int = 1
    device: str = "cpu"
    workspace: str | None = None
    metas: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Handler:
    """One endpoint's handler with what the worker needs to call it."""

    func: Callable[..., Any]
    is_async: bool
    takes_docs: bool
    takes_parameters: bool
    input_type: type[BaseModel]
    output_type: type[BaseModel]


def requests(func: F | None = None, *, on: str | list[str] | tuple[str, ...] | None = None) -> Any:
    """Mark a method as the handler of endpoints; without `on` it serves every endpoint not bound elsewhere."""
    endpoints = [DEFAULT] if on is None else [on] if isinstance(on, str) else list(on)
    for ep in endpoints:
        if not isinstance(ep, str) or not (ep == DEFAULT or ep.startswith("/")):
            raise ValueError(f"@requests(on={on!r}): an endpoint is a string starting with '/', like '/index'")

    def mark(f: F) -> F:
        existing = list(getattr(f, _MARK, []))
        setattr(f, _MARK, existing + endpoints)
        return f

    if func is not None:
        return mark(func)
    return mark


def _make_handler(func: Callable[..., Any]) -> Handler:
    sig = inspect.signature(func)
    params = sig.parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: fall back to the generic Doc
        hints = {}
    input_type = doc_type_of(hints.get("docs")) or Doc
    output_type = doc_type_of(hints.get("return")) or input_type
    return Handler(
        func=func,
        is_async=inspect.iscoroutinefunction(func),
        takes_docs="docs" in params or has_var_kw,
        takes_parameters="parameters" in params or has_var_kw,
        input_type=input_type,
        output_type=output_type,
    )


class Executor:
    """Base class of user executors. Subclass it and mark methods with `@requests`."""

    requests_table: typing.ClassVar[dict[str, str]] = {}
    runtime_args: RuntimeArgs

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for ep in getattr(value, _MARK, ()):
                    table[ep] = attr
        cls.requests_table = table

    def __new__(cls, *args: Any, **kwargs: Any) -> Executor:
        self = super().__new__(cls)
        # runtime_args exists before __init__ runs, so __init__ can read its device or replica id
        self.runtime_args = _PENDING_RUNTIME_ARGS.pop() if _PENDING_RUNTIME_ARGS else RuntimeArgs(
            name=cls.__name__)
        return self

    def close(self) -> None:
        """Called once when the replica stops; release resources here."""

    def handlers(self, uses_requests: dict[str, str] | None = None) -> dict[str, Handler]:
        """The endpoint table of this instance, with `uses_requests` overrides applied."""
        table = dict(type(self).requests_table)
        for ep, method in (uses_requests or {}).items():
            if not hasattr(self, method):
                raise ValueError(f"uses_requests maps {ep!r} to {method!r}, which {type(self).__name__} "
                                 f"does not have; its methods are {_public_methods(self)}")
            table[ep] = method
        return {ep: _make_handler(getattr(self, method)) for ep, method in table.items()}


_PENDING_RUNTIME_ARGS: list[RuntimeArgs] = []


def construct(cls: type[Executor], runtime_args: RuntimeArgs, uses_with: dict[str, Any]) -> Executor:
    """Build an executor with `runtime_args` visible inside its `__init__`."""
    _PENDING_RUNTIME_ARGS.append(runtime_args)
    try:
        instance = cls(**uses_with)
    finally:
        _PENDING_RUNTIME_ARGS.clear()
    instance.runtime_args = runtime_args
    return instance


def _public_methods(obj: object) -> list[str]:
    return sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))

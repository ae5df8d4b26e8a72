"""`when`: a small condition language that filters which docs enter a branch.

A condition is a mapping from a field path to a test, in the style of MongoDB queries::

    when={'tags.lang': {'$eq': 'en'}}
    when={'$or': [{'tags.score': {'$gte': 0.5}}, {'text': {'$regex': '^urgent'}}]}

Paths are dotted (`tags.lang`, `text`, `uri`). Operators: `$eq $ne $gt $gte $lt $lte $in $nin $exists
$regex`; combinators `$and $or $not`. A bare value means `$eq`. Several keys in one mapping must all hold.
Conditions are data, compiled once; nothing is evaluated as code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from orchestra_nb.errors import ConfigError

__all__ = ["compile_when"]

Predicate = Callable[[dict[str, Any]], bool]
_MISSING = object()


def _get(doc: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(doc, dict) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


def _cmp(op: str, arg: Any) -> Callable[[Any], bool]:
    def safe(f: Callable[[Any], bool]) -> Callable[[Any], bool]:
        def run(v: Any) -> bool:
            if v is _MISSING:
                return False
            try:
                return bool(f(v))
            except TypeError:
                return False
        return run

    if op == "$eq":
        return safe(lambda v: v == arg)
    if op == "$ne":
        return lambda v: v is _MISSING or v != arg
    if op == "$gt":
        return safe(lambda v: v > arg)
    if op == "$gte":
        return safe(lambda v: v >= arg)
    if op == "$lt":
        return safe(lambda v: v < arg)
    if op == "$lte":
        return safe(lambda v: v <= arg)
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise ConfigError(f"when: {op} takes a list, got {arg!r}")
        return safe(lambda v: v in arg) if op == "$in" else (lambda v: v is _MISSING or v not in arg)
    if op == "$exists":
        return lambda v: (v is not _MISSING and v is not None) == bool(arg)
    if op == "$regex":
        if not isinstance(arg, str):
            raise ConfigError(f"when: $regex takes a string, got {arg!r}")
        pattern = re.compile(arg)
        return lambda v: isinstance(v, str) and pattern.search(v) is not None
    raise ConfigError(f"when: unknown operator {op!r}; use one of $eq $ne $gt $gte $lt $lte $in $nin "
                      "$exists $regex, or $and $or $not")


def compile_when(condition: dict[str, Any]) -> Predicate:
    """Compile a condition mapping into a predicate over a doc (as a plain dict)."""
    if not isinstance(condition, dict):
        raise ConfigError(f"when must be a mapping like {{'tags.lang': {{'$eq': 'en'}}}}, got {condition!r}")
    tests: list[Predicate] = []
    for key, value in condition.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise ConfigError(f"when: {key} takes a non-empty list of conditions")
            parts = [compile_when(v) for v in value]
            tests.append((lambda d, ps=parts: all(p(d) for p in ps)) if key == "$and"
                         else (lambda d, ps=parts: any(p(d) for p in ps)))
        elif key == "$not":
            inner = compile_when(value)
            tests.append(lambda d, p=inner: not p(d))
        elif key.startswith("$"):
            raise ConfigError(f"when: {key!r} cannot stand at the top of a condition; use $and, $or or $not")
        else:
            path = key.split(".")
            ops = value if isinstance(value, dict) and value and all(k.startswith("$") for k in value) else {"$eq": value}
            checks = [_cmp(op, arg) for op, arg in ops.items()]
            tests.append(lambda d, path=path, cs=checks: all(c(_get(d, path)) for c in cs))
    return lambda d: all(t(d) for t in tests)
